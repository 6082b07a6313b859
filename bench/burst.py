"""The burst scenario: many documents written in place at once (issue 17 point 6).

Scanners and copy tools open, write and close each file where it lies, so every document of a
burst is seen settling at the same time (a rename of a whole folder is not: its files are
already whole). A burst of `Sizes.burst_docs[0]` documents and one of `burst_docs[-1]`, in
subfolders of `FOLDER_DOCS`, each into a daemon of its own against the emulator with instant
executions: documents per second from the first write to the last result file, and the ratio
of the big burst's rate to the small one's.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import BenchError, Daemon, count_results, drop, make_documents, mtime, result_files
from report import Figure, Target
from scenarios import Context, Run, _check_no_errors, running

FOLDER_DOCS = 1000  # documents per subfolder, as a scanner's day folders


def burst(ctx: Context) -> list[Figure]:
    small, big = ctx.sizes.burst_docs[0], ctx.sizes.burst_docs[-1]
    rates = [_rate(ctx, docs) for docs in (small, big)]
    note = f"written in place (open, write, close) in subfolders of {FOLDER_DOCS}; {ctx.limits()}"
    return [
        Figure(
            "burst",
            "burst_small_docs_per_s",
            f"docs/s, {small} written at once",
            rates[0],
            "docs/s",
            note=note,
        ),
        Figure(
            "burst",
            "burst_big_docs_per_s",
            f"docs/s, {big} written at once",
            rates[1],
            "docs/s",
            note=note,
        ),
        Figure(
            "burst",
            "burst_ratio",
            f"docs/s of {big} / docs/s of {small}",
            rates[1] / rates[0],
            "",
            Target(">=", 0.9),
        ),
    ]


def _rate(ctx: Context, docs: int) -> float:
    """Documents per second of one burst of `docs`, first write to last result file."""
    folders = [f"part-{index:03d}" for index in range(-(-docs // FOLDER_DOCS))]
    contents = make_documents(docs)
    with running(ctx, f"burst-{docs}", 0.0) as run:
        cpu = run.daemon.cpu_seconds()
        started = time.time()
        for index, folder in enumerate(folders):
            part = contents[index * FOLDER_DOCS : (index + 1) * FOLDER_DOCS]
            names = [f"doc-{n:06d}.pdf" for n in range(len(part))]
            drop(run.layout.watch_dir / "burst" / folder, names, part)
        written = time.time() - started
        results = _wait(run, [run.layout.output_dir / "burst" / f for f in folders], docs, ctx)
        cpu = run.daemon.cpu_seconds() - cpu
    _check_no_errors(results, f"burst {docs}")
    elapsed = max(mtime(p) for p in results) - started
    ctx.say(f"burst {docs}: written in {written:.1f} s, done in {elapsed:.1f} s, CPU {cpu:.1f} s")
    return docs / elapsed


def _wait(run: Run, outputs: list[Path], docs: int, ctx: Context) -> list[Path]:
    """Every result of the burst, over its subfolders; fail when they stop coming."""
    daemon: Daemon = run.daemon
    seen, progress = -1, time.monotonic()
    while (done := sum(count_results(folder) for folder in outputs)) < docs:
        if done != seen:
            seen, progress = done, time.monotonic()
        if daemon.proc.poll() is not None:
            raise BenchError(f"the daemon exited ({daemon.proc.returncode}) with {done}/{docs}")
        if time.monotonic() - progress > ctx.sizes.stall_seconds:
            raise BenchError(f"burst: no new result for {ctx.sizes.stall_seconds:.0f} s")
        time.sleep(0.2)
    return [path for folder in outputs for path in result_files(folder)]
