"""The pipelines scenario: resources against the number of pipelines (issue 26 point 1).

One config of N pipelines (one folder each, as one pipeline per customer folder), for each N of
`Sizes.pipelines`, each in a daemon of its own against the emulator: once the daemon says
READY=1, its threads (/proc/PID/task), inotify instances (its fds on anon_inode:inotify), RSS,
the time from the process start to READY=1, the folders that fell back to polling (its log's
"inotify limit reached" lines), and drop → result of documents dropped one at a time into the
last pipeline's folder, minus settle_seconds, to compare with one pipeline's.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import NamedTuple

from harness import (
    PYTHON,
    BenchError,
    Daemon,
    NotifyListener,
    child_env,
    drop,
    make_documents,
    mtime,
    start_emulator,
    wait_for_results,
    wait_until,
)
from report import Figure, Target
from scenarios import Context

LATENCY_DOCS = 3  # dropped one at a time into the last pipeline's folder
FELL_BACK = "polling this folder instead"  # in the log line of a folder refused by inotify


class Resources(NamedTuple):
    pipelines: int
    threads: int
    instances: int
    rss_mib: float
    start_s: float
    fell_back: int
    latency_s: float


LATENCY_MARGIN_S = 0.05  # the most pipelines may add to one pipeline's drop → result


def pipelines(ctx: Context) -> list[Figure]:
    runs = [_measure(ctx, count) for count in sorted(ctx.sizes.pipelines)]
    figures: list[Figure] = []
    for run in runs:
        figures += _figures(run, judged=run is runs[-1])
    most, one = runs[-1], runs[0]
    figures.append(
        Figure(
            "pipelines",
            "pipelines_latency_added_s",
            f"drop → result, {most.pipelines} pipelines - {one.pipelines}",
            most.latency_s - one.latency_s,
            "s",
            Target("<", LATENCY_MARGIN_S),
            note=f"median of {LATENCY_DOCS} documents dropped one at a time into the last "
            "pipeline's folder, each size in a daemon of its own",
        )
    )
    return figures


def _measure(ctx: Context, count: int) -> Resources:
    home = ctx.home(f"pipelines-{count}")
    emulator = start_emulator(ctx.procs, home / "emulator.log", 0.0, ctx.org_limit)
    config = _write_config(ctx, home, emulator.deployment_url, count)
    notify = NotifyListener()
    log_path = home / "daemon.log"
    started_at = time.time()
    args = [PYTHON, "-m", "watcher.cli", "run", "--config", str(config)]
    daemon = Daemon(ctx.procs.spawn(args, log_path, child_env(notify.env)), log_path, started_at)
    ctx.say(f"pipelines {count}: daemon pid {daemon.pid}, in {home}")
    try:
        wait_until(lambda: notify.ready_at is not None, 120.0, "READY=1", alive=daemon.proc)
        start_s = (notify.ready_at or started_at) - started_at
        latency = _latency(ctx, daemon, home / "drops" / _name(count - 1), home / "results")
        return Resources(
            count,
            len(os.listdir(f"/proc/{daemon.pid}/task")),
            _inotify_instances(daemon.pid),
            daemon.status_kib("VmRSS") / 1024,
            start_s,
            sum(FELL_BACK in str(e.get("event")) for e in daemon.log_events()),
            latency,
        )
    finally:
        ctx.finish_daemon(f"pipelines-{count}", daemon)
        ctx.procs.stop(emulator.proc)
        notify.close()


def _write_config(ctx: Context, home: Path, url: str, count: int) -> Path:
    """The bench's usual config (Layout.tables), with `count` pipelines."""
    layout = ctx.layout(home, url)
    tables = layout.tables()
    lines = [
        "[database]",
        f"url = {json.dumps(f'sqlite:///{layout.db_path}')}",
        "[daemon]",
        *_pairs(tables["daemon"]),
    ]
    for index in range(count):
        name = _name(index)
        folders = {"watch_dir": home / "drops" / name, "output_dir": home / "results" / name}
        for folder in folders.values():
            folder.mkdir(parents=True)
        pipeline = {**tables["pipeline"], "name": name, **{k: str(v) for k, v in folders.items()}}
        lines += ["[[pipelines]]", *_pairs(pipeline), "[pipelines.api]", *_pairs(tables["api"])]
    layout.config_path.write_text("\n".join(lines) + "\n")
    return layout.config_path


def _pairs(table: dict[str, object]) -> list[str]:
    return [f"{key} = {json.dumps(value)}" for key, value in table.items()]


def _name(index: int) -> str:
    return f"p{index:03}"


def _latency(ctx: Context, daemon: Daemon, folder: Path, results: Path) -> float:
    """Median drop → result - settle_seconds of documents dropped one at a time, after
    one more to warm up (the first upload opens the connection)."""
    output = results / folder.name
    took = []
    for index, content in enumerate(make_documents(LATENCY_DOCS + 1)):
        dropped = drop(folder, [f"doc-{index:06d}.pdf"], [content])
        done = wait_for_results(output, index + 1, daemon, ctx.sizes.stall_seconds, step=0.01)
        newest = max(mtime(path) for path in done)
        took.append(newest - dropped - ctx.settle_seconds)
    return statistics.median(took[1:])


def _inotify_instances(pid: int) -> int:
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except OSError:  # closed meanwhile
            pass
    return found


def _figures(run: Resources, judged: bool) -> list[Figure]:
    """Each figure of one size; the targets are judged at the biggest size only."""
    n = run.pipelines

    def figure(key: str, label: str, value: float, unit: str, target: Target | None) -> Figure:
        return Figure("pipelines", f"pipelines_{n}_{key}", label, value, unit, target)

    if run.fell_back and n == 1:
        raise BenchError("one pipeline fell back to polling: inotify is out of instances")
    return [
        figure("threads", f"threads, {n} pipelines", run.threads, "", _if(judged, "<", 40)),
        figure("inotify", f"inotify instances, {n}", run.instances, "", _if(judged, "==", 1)),
        figure(
            "polling", f"folders polled at a limit, {n}", run.fell_back, "", _if(judged, "==", 0)
        ),
        figure("rss_mib", f"RSS after start, {n} pipelines", run.rss_mib, "MiB", None),
        figure("start_s", f"start → READY=1, {n} pipelines", run.start_s, "s", None),
        figure("latency_s", f"drop → result - settle, last of {n}", run.latency_s, "s", None),
    ]


def _if(judged: bool, op: str, value: float) -> Target | None:
    return Target(op, value) if judged else None
