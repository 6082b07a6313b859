"""The scale scenario: a long history in the tree and the database (issue 17).

The processed tree of `memory` (or of a seed run) has its stored answers dropped, as
`keep_results_days` does a week after each result file, and is grown cheaply (`restart_state`)
to each size of `Sizes.scale_docs` in turn. At each size the daemon starts over it; once it
says READY=1 a new document is dropped, while the startup scan is still listing the tree.
Measured: that document's drop → result, RSS, the listing's time and CPU (from the daemon's
`folder listed` debug line), a rescan's CPU (it lists only the folders that changed), idle CPU
afterwards with rescans every `Sizes.scale_rescan_seconds` (more often than the default, so that the
window holds some: an upper bound for the default) plus the full listing's CPU spread over
`FULL_LISTING_SECONDS`, and database bytes per document. Two sizes give the slope of each figure.
Then documents are written in place into a running daemon over the biggest (history.py).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any

from harness import (
    BenchError,
    Daemon,
    Layout,
    NotifyListener,
    drop,
    make_documents,
    mtime,
    start_daemon,
    start_emulator,
    wait_for_results,
    wait_until,
)
from history import burst_figures, burst_into_history
from report import Figure, Target
from restart_state import grow
from scenarios import Context, _idle_cpu, _seed

from watcher.folders import FULL_LISTING_SECONDS


@dataclass(frozen=True)
class Measured:
    docs: int
    new_doc_s: float  # drop → result - settle, dropped right after READY=1
    rss_mib: float  # VmHWM once listed and idle
    listing_s: float
    listing_cpu_s: float
    rescan_cpu_s: float  # a rescan of the unchanged tree (the whole process's CPU meanwhile)
    idle_cpu_per_min: float  # rescans every scale_rescan_seconds included
    db_bytes_per_doc: float
    reuploads: int


def scale(ctx: Context) -> list[Figure]:
    """Each size of `scale_docs` in turn; the figures of the biggest, and slopes."""
    layout = ctx.processed or _seed(ctx)
    measured = [_measure(ctx, layout, docs) for docs in ctx.sizes.scale_docs]
    burst = burst_into_history(ctx, layout)  # over the biggest size's tree and database
    return [*_figures(measured, ctx.sizes.scale_rescan_seconds), *burst_figures(burst)]


def expire_history(layout: Layout) -> None:
    """What a week of `keep_results_days` leaves: no stored answers, their pages given back."""
    with closing(sqlite3.connect(layout.db_path, isolation_level=None)) as db:
        ended = "state IN ('done', 'failed')"
        db.execute("BEGIN IMMEDIATE")
        kept = f"id IN (SELECT job_id FROM answers) AND {ended}"
        db.execute(f"UPDATE jobs SET answer_dropped_at = finished_at WHERE {kept}")
        db.execute(f"DELETE FROM answers WHERE job_id IN (SELECT id FROM jobs WHERE {ended})")
        db.execute(f"DELETE FROM results WHERE job_id IN (SELECT id FROM jobs WHERE {ended})")
        db.execute("COMMIT")
        db.executescript("PRAGMA incremental_vacuum")


def _measure(ctx: Context, layout: Layout, docs: int) -> Measured:
    built = time.monotonic()
    expire_history(layout)  # also of the last size's new document: clones copy its row
    added = grow(layout, docs)
    ctx.say(f"scale: {added} processed documents cloned in {time.monotonic() - built:.1f} s")
    db_bytes = layout.db_path.stat().st_size / docs
    emulator = start_emulator(
        ctx.procs, layout.home / f"emulator-scale-{docs}.log", 0.0, ctx.org_limit
    )
    notify = NotifyListener()
    log_name = f"daemon-scale-{docs}.log"
    rescans = ("pipeline", "rescan_seconds", ctx.sizes.scale_rescan_seconds)
    config = replace(layout, overrides=(*layout.overrides, rescans))
    daemon = start_daemon(
        ctx.procs, config.with_url(emulator.deployment_url, "debug"), log_name, env=notify.env
    )
    ctx.say(f"scale: daemon pid {daemon.pid} over {docs} processed documents")
    try:
        new_doc = _new_doc_seconds(ctx, layout, daemon, notify, docs)
        listing = _wait_listed(daemon, ctx.sizes.stall_seconds * 4)
        rescan = _wait_listed(daemon, ctx.sizes.scale_rescan_seconds * 3, count=2)
        idle = _idle_cpu(ctx, daemon) * 60 / ctx.sizes.idle_seconds
        rss = daemon.status_kib("VmHWM") / 1024
        posts = int(emulator.stats()["posts"])
    finally:
        ctx.finish_daemon("scale", daemon)
        ctx.procs.stop(emulator.proc)
        notify.close()
    seconds, cpu = float(listing["seconds"]), float(listing["cpu_seconds"])
    rescan_cpu = float(rescan["cpu_seconds"])
    return Measured(docs, new_doc, rss, seconds, cpu, rescan_cpu, idle, db_bytes, posts - 1)


def _new_doc_seconds(
    ctx: Context, layout: Layout, daemon: Daemon, notify: NotifyListener, docs: int
) -> float:
    wait_until(lambda: notify.ready_at is not None, 60.0, "READY=1 from the daemon")
    folder = f"fresh-{docs}"
    dropped = drop(layout.watch_dir / folder, ["new.pdf"], make_documents(1))
    if _listed(daemon) is not None:
        ctx.problems.append(f"scale {docs}: the listing ended before the new document came")
    results = wait_for_results(layout.output_dir / folder, 1, daemon, ctx.sizes.stall_seconds)
    return mtime(results[0]) - dropped - layout.settle_seconds


def _listed(daemon: Daemon, count: int = 1) -> dict[str, Any] | None:
    """The `count`th `folder listed` line (1: the startup listing, then the rescans)."""
    listed = [e for e in daemon.log_events() if e.get("event") == "folder listed"]
    return listed[count - 1] if len(listed) >= count else None


def _wait_listed(daemon: Daemon, timeout: float, count: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (found := _listed(daemon, count)) is None:
        if time.monotonic() > deadline or daemon.proc.poll() is not None:
            raise BenchError(f"the daemon never finished listing number {count}")
        time.sleep(0.2)
    return found


def _slope(measured: list[Measured], figure: str) -> float:
    """Change of a figure per 100 000 more documents, between the first size and the last."""
    first, last = measured[0], measured[-1]
    if last.docs == first.docs:
        return float("nan")
    change = float(getattr(last, figure)) - float(getattr(first, figure))
    return change * 100_000 / (last.docs - first.docs)


def _figures(measured: list[Measured], rescan_seconds: float) -> list[Figure]:
    top = measured[-1]
    sizes = " → ".join(f"{m.docs}" for m in measured)
    amortised = top.idle_cpu_per_min + top.listing_cpu_s * 60 / FULL_LISTING_SECONDS
    per = "per 100 000 more docs"
    return [
        Figure(
            "scale",
            "scale_new_doc_s",
            f"new doc's result during the startup scan, {top.docs} docs",
            top.new_doc_s,
            "s",
            Target("<", 2),
            f"dropped at READY=1, drop → result - settle; sizes {sizes}: "
            + ", ".join(f"{m.new_doc_s:.2f}" for m in measured),
        ),
        Figure(
            "scale",
            "scale_rss_mb",
            f"peak RSS, {top.docs} docs in tree and database",
            top.rss_mib,
            "MiB",
            Target("<", 100),
            f"VmHWM once listed; {_slope(measured, 'rss_mib'):+.1f} MiB {per}",
        ),
        Figure(
            "scale",
            "scale_listing_s",
            f"startup listing of {top.docs} docs",
            top.listing_s,
            "s",
            note=f"CPU {top.listing_cpu_s:.1f} s; {_slope(measured, 'listing_s'):+.1f} s "
            f"{per}; again every {FULL_LISTING_SECONDS / 3600:.0f} h",
        ),
        Figure(
            "scale",
            "scale_rescan_cpu_s",
            f"CPU of a rescan of {top.docs} unchanged docs",
            top.rescan_cpu_s,
            "s",
            note=f"only the folders whose mtime moved are listed; "
            f"{_slope(measured, 'rescan_cpu_s'):+.3f} s {per}",
        ),
        Figure(
            "scale",
            "scale_idle_cpu_s_per_min",
            f"idle CPU with {top.docs} docs, rescans included",
            amortised,
            "s/min",
            Target("<", 1),
            f"{top.idle_cpu_per_min:.2f} s/min with rescans every {rescan_seconds:g} s "
            f"(default 300) + the full listing's CPU every {FULL_LISTING_SECONDS / 3600:.0f} h",
        ),
        Figure(
            "scale",
            "scale_db_bytes_per_doc",
            "database bytes per processed document",
            top.db_bytes_per_doc,
            "B",
            Target("<", 1024),
            "answers expired (keep_results_days)",
        ),
        Figure(
            "scale",
            "scale_reuploads",
            "documents uploaded again",
            float(top.reuploads),
            "",
            Target("==", 0),
        ),
    ]
