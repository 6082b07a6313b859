"""The backlog scenario: documents already waiting when the daemon starts, packed several per
execution (`files_per_execution = 4`), against the emulator's four parallel file batches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from harness import (
    BenchError,
    doc_names,
    drop,
    error_files,
    make_documents,
    mtime,
    start_daemon,
    start_emulator,
    wait_for_results,
)
from report import Figure, Target
from scenarios import Context

FOLDERS = ("scan-a", "scan-b", "scan-c", "scan-d")  # the same file names in each
FILES_PER_EXECUTION = 4
TARGET_RATIO = 0.35  # of the ideal of any one-file-per-execution client


def backlog(ctx: Context) -> list[Figure]:
    """Total time, from the daemon's `started` line (its scan of the waiting documents
    included, the interpreter's start and the schema's creation not) to the last result
    file, over the ideal of a client that sends one file per execution (count x file time /
    org limit); from the process's start as well."""
    count, seconds = ctx.sizes.backlog_docs, ctx.sizes.backlog_file_seconds
    home = ctx.home("backlog")
    emulator = start_emulator(ctx.procs, home / "emulator.log", seconds, ctx.org_limit)
    # info: the `started` line, from which the backlog is timed.
    layout = ctx.layout(home, emulator.deployment_url).with_url(emulator.deployment_url, "info")
    packing = ("api", "files_per_execution", FILES_PER_EXECUTION)
    layout = replace(layout, overrides=(packing, *layout.overrides))
    sources = _drop_backlog(layout.watch_dir, count)
    daemon = start_daemon(ctx.procs, layout)
    ctx.say(f"backlog: daemon pid {daemon.pid}, emulator pid {emulator.proc.pid}, in {home}")
    try:
        results = [
            path
            for folder in FOLDERS
            for path in wait_for_results(
                layout.output_dir / folder,
                count // len(FOLDERS),
                daemon,
                ctx.sizes.stall_seconds + seconds,
            )
        ]
        stats = emulator.stats()
    finally:
        ctx.finish_daemon("backlog", daemon)
        ctx.procs.stop(emulator.proc)
    _check_own_outputs(results, sources, layout.output_dir)
    ready = daemon.event_time("started")
    if ready is None:
        raise BenchError("backlog: the daemon logged no `started` line")
    return _figures(ctx, results, stats, (daemon.started_at, ready), count, seconds)


def _drop_backlog(watch_dir: Path, count: int) -> dict[str, str]:
    """`count` documents in the four folders, sharing file names; relative path -> sha256."""
    per_folder = count // len(FOLDERS)
    names = doc_names(per_folder, "page")
    sources = {}
    for folder in FOLDERS:
        contents = make_documents(per_folder)
        drop(watch_dir / folder, names, contents)
        for name, content in zip(names, contents, strict=True):
            sources[f"{folder}/{name}"] = hashlib.sha256(content).hexdigest()
    return sources


def _check_own_outputs(results: list[Path], sources: dict[str, str], output_dir: Path) -> None:
    """Each result must carry its own document's output (the emulator's echo of its hash)."""
    failed = error_files(results)
    if failed:
        raise BenchError(f"backlog: {len(failed)} documents got an error file, e.g. {failed[0]}")
    for path in results:
        source = path.relative_to(output_dir).as_posix().removesuffix(".json")
        output = json.loads(path.read_text())["result"]["output"]
        if output.get("sha256") != sources[source]:
            raise BenchError(f"backlog: {path} holds another document's output")


def _figures(
    ctx: Context,
    results: list[Path],
    stats: dict[str, object],
    started: tuple[float, float],
    count: int,
    seconds: float,
) -> list[Figure]:
    last = max(mtime(p) for p in results)
    total, process_total = last - started[1], last - started[0]
    ideal = count * seconds / ctx.org_limit
    executions = int(str(stats["executions_created"]))
    label = (
        f"total / ideal ({count} x {seconds:g} s / {ctx.org_limit}), {FILES_PER_EXECUTION} a time"
    )
    return [
        Figure(
            "backlog",
            "backlog_ratio",
            label,
            total / ideal,
            "",
            Target("<=", TARGET_RATIO),
            f"total {total:.1f} s from the `started` line, ideal {ideal:.1f} s",
        ),
        Figure(
            "backlog",
            "backlog_ratio_from_process_start",
            "the same from the process's start",
            process_total / ideal,
            "",
            note=f"total {process_total:.1f} s",
        ),
        Figure("backlog", "backlog_executions", "executions created", executions, ""),
        Figure(
            "backlog",
            "backlog_docs_per_execution",
            "documents per execution",
            count / executions,
            "",
        ),
    ]
