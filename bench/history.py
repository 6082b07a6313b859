"""The scale scenario's burst (issue 26 points 2 and 3): documents written in place into a
running daemon over the scale scenario's biggest history, with `keep_results_days = 0`.

Once every result is written and every answer expired: the daemon's RSS, the database's
bytes per processed document (the whole file once the daemon stopped and SQLite folded its
WAL in; and what the burst's documents added, over the history before it), where those
bytes are (each table and index, from SQLite's dbstat), then the RSS of a daemon started
over the same tree and database once it has listed it.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from harness import (
    BenchError,
    Daemon,
    Layout,
    count_results,
    drop,
    make_documents,
    start_daemon,
    start_emulator,
    wait_until,
)
from report import Figure, Target
from scenarios import Context

FOLDER_DOCS = 1000
KEEP_NONE = ("database", "keep_results_days", 0)


@dataclass(frozen=True)
class Burst:
    docs: int  # in tree and database afterwards
    burst: int  # of which written in place into the running daemon
    rss_burst_mib: float  # VmHWM of the daemon that took the burst
    rss_restart_mib: float  # VmHWM of a daemon started over it, once listed
    bytes_per_doc: float  # the file / the documents, answers expired
    burst_bytes_per_doc: float  # what the burst added / its documents
    wal_bytes: int  # the WAL's size while the daemon ran, after the burst
    connections: int  # the daemon's open connections to the database after the burst
    where: str  # bytes per document by table and index


def burst_into_history(ctx: Context, layout: Layout) -> Burst:
    count = ctx.sizes.scale_burst_docs
    config = replace(layout, overrides=(*layout.overrides, KEEP_NONE), log_level="warning")
    before = _file_bytes(layout.db_path)
    emulator = start_emulator(ctx.procs, layout.home / "emulator-burst.log", 0.0, ctx.org_limit)
    daemon = start_daemon(ctx.procs, config.with_url(emulator.deployment_url), "daemon-burst.log")
    ctx.say(f"scale burst: {count} documents into daemon pid {daemon.pid}")
    try:
        started = time.monotonic()
        folders = _write_burst(layout, count)
        _wait_results(ctx, daemon, folders, count)
        wait_until(lambda: _answers(layout.db_path) == 0, ctx.sizes.stall_seconds * 4, "expiry")
        ctx.say(f"scale burst: processed and expired in {time.monotonic() - started:.1f} s")
        rss_burst = daemon.status_kib("VmHWM") / 1024
        wal = _wal_bytes(layout.db_path)
        connections = _open_files(daemon, layout.db_path)
    finally:
        ctx.finish_daemon("scale burst", daemon)
    docs = _jobs(layout.db_path)
    after = _file_bytes(layout.db_path)
    where = _where(layout.db_path, docs)
    try:
        rss_restart = _restarted_rss(ctx, config.with_url(emulator.deployment_url))
    finally:
        ctx.procs.stop(emulator.proc)
    burst_bytes = (after - before) / count
    return Burst(
        docs, count, rss_burst, rss_restart, after / docs, burst_bytes, wal, connections, where
    )


def _write_burst(layout: Layout, count: int) -> list[Path]:
    folders = []
    for start in range(0, count, FOLDER_DOCS):
        chunk = min(FOLDER_DOCS, count - start)
        folder = layout.watch_dir / "burst" / f"part-{start // FOLDER_DOCS:03d}"
        drop(folder, [f"doc-{n:06d}.pdf" for n in range(chunk)], make_documents(chunk))
        folders.append(layout.output_dir / "burst" / folder.name)
    return folders


def _wait_results(ctx: Context, daemon: Daemon, folders: list[Path], count: int) -> None:
    seen, progress = -1, time.monotonic()
    while (done := sum(count_results(folder) for folder in folders)) < count:
        if done != seen:
            seen, progress = done, time.monotonic()
        if daemon.proc.poll() is not None:
            raise BenchError(f"scale burst: the daemon exited with {done}/{count}")
        if time.monotonic() - progress > ctx.sizes.stall_seconds:
            raise BenchError(f"scale burst: no new result for {ctx.sizes.stall_seconds:.0f} s")
        time.sleep(0.5)


def _restarted_rss(ctx: Context, layout: Layout) -> float:
    """VmHWM of a daemon started over the tree, once it listed it and went idle."""
    restarted = replace(layout, log_level="debug")
    daemon = start_daemon(ctx.procs, restarted, "daemon-burst-restart.log")
    try:
        wait_until(lambda: _listed(daemon), ctx.sizes.stall_seconds * 4, "the startup listing")
        time.sleep(2.0)  # let the loops settle after the listing
        return daemon.status_kib("VmHWM") / 1024
    finally:
        ctx.finish_daemon("scale restart", daemon)


def _listed(daemon: Daemon) -> bool:
    if daemon.proc.poll() is not None:
        raise BenchError("scale restart: the daemon exited")
    return any(e.get("event") == "folder listed" for e in daemon.log_events())


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return list(db.execute(sql).fetchall())


def _answers(path: Path) -> int:
    return int(str(_query(path, "SELECT count(*) FROM answers")[0][0]))


def _jobs(path: Path) -> int:
    return int(str(_query(path, "SELECT count(*) FROM jobs")[0][0]))


def _file_bytes(path: Path) -> int:
    """The database file's size, with no daemon on it (its WAL folded in at the last close)."""
    return path.stat().st_size


def _open_files(daemon: Daemon, path: Path) -> int:
    """How many descriptors of the daemon are open on `path`: one per SQLite connection."""
    fds = Path(f"/proc/{daemon.pid}/fd")
    return sum(1 for fd in fds.iterdir() if _target(fd) == str(path))


def _target(link: Path) -> str:
    try:
        return str(link.readlink())
    except OSError:  # closed meanwhile
        return ""


def _wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def _where(path: Path, docs: int) -> str:
    """Bytes per document of each table and index (their pages), biggest first."""
    rows = _query(path, "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
    free = _query(path, "PRAGMA freelist_count")[0][0]
    parts = [f"{name} {int(str(size)) / docs:.0f}" for name, size in rows if size]
    return ", ".join([*parts[:6], f"free pages {free}"])


def burst_figures(found: Burst) -> list[Figure]:
    written = f"after {found.burst} written in place into the running daemon"
    return [
        Figure(
            "scale",
            "scale_burst_db_bytes_per_doc",
            f"database bytes per processed document, {found.docs} docs, answers expired",
            found.bytes_per_doc,
            "B",
            Target("<", 600),
            f"{written}; the burst's own {found.burst_bytes_per_doc:.0f} B a document; "
            f"by table and index: {found.where}; WAL {found.wal_bytes / 2**20:.1f} MiB while "
            "it ran (aim 300)",
        ),
        Figure(
            "scale",
            "scale_burst_rss_mb",
            f"peak RSS, {found.docs} docs in tree and database, {written}",
            found.rss_burst_mib,
            "MiB",
            Target("<", 90),
            f"{found.connections} connections open to the database",
        ),
        Figure(
            "scale",
            "scale_restart_rss_mb",
            f"peak RSS after a restart over {found.docs} docs, once listed",
            found.rss_restart_mib,
            "MiB",
            Target("<", 90),
        ),
    ]
