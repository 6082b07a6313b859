"""The scenarios: each starts what it needs, measures, stops it, and returns its figures."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import peer
from harness import (
    PYTHON,
    BenchError,
    Daemon,
    Emulator,
    Layout,
    NotifyListener,
    Override,
    Processes,
    child_env,
    cpu_seconds,
    doc_names,
    drop,
    error_files,
    log_problems,
    make_documents,
    mtime,
    percentile,
    start_daemon,
    start_emulator,
    wait_for_results,
    wait_until,
)
from report import Figure, Target
from restart_state import FOLDER_DOCS, grow

BENCH_DIR = Path(__file__).resolve().parent
SERVER_LIMIT = 20  # the emulator's org limit, and the pipeline's max_in_flight
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    emulator_seconds: float
    emulator_connections: int
    throughput_docs: int
    saturation_docs: int
    saturation_execution_seconds: float
    polls_docs: int
    polls_execution_seconds: float
    latency_docs: int
    memory_batches: int
    memory_batch_docs: int
    idle_seconds: float
    restart_docs: tuple[int, ...]  # the first is judged, the others are extra lines
    restart_seed_docs: int  # processed for real when the memory scenario did not run
    stall_seconds: float  # a scenario fails when no result came for this long
    backlog_docs: int  # waiting at the start, in four folders that share the file names
    backlog_file_seconds: float
    scale_docs: tuple[int, ...] = ()  # the scale scenario's sizes, each grown from the last
    burst_docs: tuple[int, ...] = (1000, 20_000)  # the burst scenario's small and big burst
    # The scale daemons' rescan_seconds (the default is 300): rescans happen while it measures.
    scale_rescan_seconds: float = 20.0
    big_docs: tuple[int, int] = (16, 48)  # the bigdocs scenario's packed drop: count, MiB each
    huge_doc_mib: int = 2048  # and its one big document
    pipelines: tuple[int, ...] = (1, 50, 150)  # the pipelines scenario's config sizes
    # Written in place into a running daemon over the scale scenario's biggest history: with
    # it, the tree and database hold scale_docs[-1] + scale_burst_docs processed documents.
    scale_burst_docs: int = 20_000


FULL = Sizes(
    5.0,
    8,
    1000,
    400,
    2.0,
    60,
    5.0,
    30,
    5,
    1000,
    60.0,
    (5000, 50_000),
    1000,
    90.0,
    400,
    2.0,
    (50_000, 180_000),
)
SMOKE = Sizes(
    1.0,
    4,
    50,
    40,
    0.5,
    10,
    1.0,
    3,
    2,
    100,
    5.0,
    (1000, 2000),
    100,
    30.0,
    40,
    0.5,
    (2000, 4000),
    (100, 400),
    2.0,
    big_docs=(4, 1),
    huge_doc_mib=8,
    pipelines=(1, 20),
    scale_burst_docs=400,
)


@dataclass
class Context:
    workdir: Path
    procs: Processes
    sizes: Sizes
    settle_seconds: float
    org_limit: int = SERVER_LIMIT  # the emulator's concurrent executions per organisation
    overrides: tuple[Override, ...] = ()  # config keys changed with --set
    processed: Layout | None = None  # a tree of processed documents, for the restart test
    problems: list[str] = field(default_factory=list)

    def layout(self, home: Path, url: str) -> Layout:
        return Layout(home, url, self.settle_seconds, SERVER_LIMIT, overrides=self.overrides)

    def limits(self) -> str:
        in_flight = self.layout(self.workdir, "").tables()["api"]["max_in_flight"]
        return f"max_in_flight {in_flight}, org limit {self.org_limit}"

    def home(self, scenario: str) -> Path:
        """A fresh folder for one scenario (what an earlier run left there is removed)."""
        folder = self.workdir / scenario
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def say(self, text: str) -> None:
        print(f"[bench] {text}", file=sys.stderr, flush=True)

    def finish_daemon(self, scenario: str, daemon: Daemon) -> None:
        """Stop it with SIGTERM as systemd would; note a bad exit and warning lines."""
        started = time.monotonic()
        code = self.procs.stop(daemon.proc, timeout=60.0)
        took = time.monotonic() - started
        if code != 0:
            self.problems.append(f"{scenario}: daemon exited {code} on SIGTERM")
        if took > 5.0:
            self.problems.append(f"{scenario}: daemon took {took:.1f} s to stop on SIGTERM")
        self.problems.extend(f"{scenario}: {p}" for p in log_problems(daemon))


@dataclass
class Run:
    emulator: Emulator
    daemon: Daemon
    layout: Layout

    def drop_batch(self, folder: str, count: int, prefix: str = "doc") -> float:
        return drop(self.layout.watch_dir / folder, doc_names(count, prefix), make_documents(count))

    def results(self, folder: str, count: int, stall_seconds: float) -> list[Path]:
        return wait_for_results(self.layout.output_dir / folder, count, self.daemon, stall_seconds)


@contextmanager
def running(
    ctx: Context, scenario: str, execution_seconds: float, folders: Sequence[str] = ()
) -> Iterator[Run]:
    """The emulator and a warmed-up daemon (one document processed), stopped afterwards."""
    home = ctx.home(scenario)
    emulator = start_emulator(ctx.procs, home / "emulator.log", execution_seconds, ctx.org_limit)
    layout = ctx.layout(home, emulator.deployment_url)
    for folder in (*folders, "warmup"):
        (layout.watch_dir / folder).mkdir(parents=True, exist_ok=True)
    daemon = start_daemon(ctx.procs, layout)
    ctx.say(f"{scenario}: daemon pid {daemon.pid}, emulator pid {emulator.proc.pid}, in {home}")
    run = Run(emulator, daemon, layout)
    try:
        run.drop_batch("warmup", 1, "warm")
        run.results("warmup", 1, ctx.sizes.stall_seconds)
        yield run
    finally:
        ctx.finish_daemon(scenario, daemon)
        ctx.procs.stop(emulator.proc)


def _check_no_errors(results: Sequence[Path], scenario: str) -> None:
    failed = error_files(results)
    if failed:
        raise BenchError(f"{scenario}: {len(failed)} documents got an error file, e.g. {failed[0]}")


# -- the emulator alone ---------------------------------------------------------------------


def emulator_alone(ctx: Context) -> list[Figure]:
    """POST + GET pairs per second that the emulator serves to a client process of its own."""
    sizes = ctx.sizes
    emulator = start_emulator(ctx.procs, ctx.home("emulator") / "emulator.log", 0.0, 1_000_000)
    client = [
        PYTHON,
        str(BENCH_DIR / "emulator_client.py"),
        "--url",
        emulator.deployment_url,
        "--seconds",
        str(sizes.emulator_seconds),
        "--connections",
        str(sizes.emulator_connections),
    ]
    try:
        cpu_before = cpu_seconds(emulator.proc.pid)
        answer = subprocess.run(
            client,
            env=child_env(),
            capture_output=True,
            check=True,
            timeout=sizes.emulator_seconds + 60,
        )
        cpu_emulator = cpu_seconds(emulator.proc.pid) - cpu_before
    finally:
        ctx.procs.stop(emulator.proc)
    counts = json.loads(answer.stdout)
    return _emulator_figures(counts, cpu_emulator, sizes.emulator_connections)


def _emulator_figures(
    counts: dict[str, float], cpu_emulator: float, connections: int
) -> list[Figure]:
    pairs = max(counts["pairs"], 1)
    note = (
        f"{connections} keep-alive connections from a client process of its own; "
        f"{counts['errors']:g} errors; the client's CPU per pair "
        f"{1e6 * counts['cpu_seconds'] / pairs:.0f} us; each document needs 1 POST + >= 1 GET"
    )
    pairs_per_second = counts["pairs"] / counts["seconds"]
    return [
        Figure(
            "emulator",
            "emulator_requests_per_s",
            "requests/s served (POST+GET)",
            2 * pairs_per_second,
            "req/s",
            note=note,
        ),
        Figure(
            "emulator",
            "emulator_pairs_per_s",
            "POST+GET pairs/s (= docs/s ceiling)",
            pairs_per_second,
            "pairs/s",
            Target(">=", 2000),
        ),
        Figure(
            "emulator",
            "emulator_cpu_us_per_pair",
            "emulator CPU per pair",
            1e6 * cpu_emulator / pairs,
            "us",
        ),
    ]


# -- throughput, saturation, polls ----------------------------------------------------------


def throughput(ctx: Context) -> list[Figure]:
    """Documents per second, first drop to last result file, executions that end at once."""
    count = ctx.sizes.throughput_docs
    script, why_not = peer.checkout()
    peer_run: peer.PeerRun | None = None
    with running(ctx, "throughput", 0.0, ["batch"]) as run:
        cpu_daemon, cpu_emulator = run.daemon.cpu_seconds(), cpu_seconds(run.emulator.proc.pid)
        started = run.drop_batch("batch", count)
        results = run.results("batch", count, ctx.sizes.stall_seconds)
        cpu_daemon = run.daemon.cpu_seconds() - cpu_daemon
        cpu_emulator = cpu_seconds(run.emulator.proc.pid) - cpu_emulator
        if script is not None:  # the same files, the same emulator, the daemon idle by now
            peer_run = _peer_run(ctx, script, run, count)
    _check_no_errors(results, "throughput")
    elapsed = max(mtime(p) for p in results) - started
    note = (
        f"{count} docs of 4 KiB dropped at once; {ctx.limits()}; "
        f"includes settle_seconds = {ctx.settle_seconds}"
    )
    return [
        Figure(
            "throughput",
            "throughput_docs_per_s",
            f"docs/s ({count} docs, 0 s executions)",
            count / elapsed,
            "docs/s",
            Target(">=", 300),
            note,
        ),
        Figure(
            "throughput",
            "throughput_daemon_cpu_ms_per_doc",
            "daemon CPU per document",
            1000 * cpu_daemon / count,
            "ms",
            Target("<=", 3),
        ),
        Figure(
            "throughput",
            "throughput_emulator_cpu_ms_per_doc",
            "emulator CPU per document",
            1000 * cpu_emulator / count,
            "ms",
        ),
        *peer.figures(count / elapsed, peer_run, why_not),
    ]


def _peer_run(ctx: Context, script: Path, run: Run, count: int) -> peer.PeerRun:
    home = run.layout.home / "peer"
    python = peer.interpreter(script, ctx.workdir, ctx.say)
    ctx.say(f"throughput: the batch script on the same {count} files ({python})")
    folder, url = run.layout.watch_dir / "batch", run.emulator.deployment_url
    return peer.run(python, script, folder, url, home, count)


def saturation(ctx: Context) -> list[Figure]:
    """Total time over the ideal when executions, not the daemon, should be the limit."""
    count, seconds = ctx.sizes.saturation_docs, ctx.sizes.saturation_execution_seconds
    with running(ctx, "saturation", seconds, ["batch"]) as run:
        started = run.drop_batch("batch", count)
        results = run.results("batch", count, ctx.sizes.stall_seconds + seconds)
        stats = run.emulator.stats()
    _check_no_errors(results, "saturation")
    total = max(mtime(p) for p in results) - started
    ideal = count * seconds / ctx.org_limit
    label = f"total / ideal ({count} x {seconds:g} s / {ctx.org_limit})"
    return [
        Figure(
            "saturation",
            "saturation_ratio",
            label,
            total / ideal,
            "",
            Target("<=", 1.05),
            f"total {total:.1f} s, ideal {ideal:.1f} s",
        ),
        Figure(
            "saturation",
            "saturation_max_concurrent",
            "peak executions on the server",
            max(stats["max_concurrent"].values()),
            "",
        ),
        Figure("saturation", "saturation_rate_limited", "429 answers", stats["rate_limited"], ""),
    ]


def polls(ctx: Context) -> list[Figure]:
    """Status GETs per document, and result file time minus the server's completion time."""
    count, seconds = ctx.sizes.polls_docs, ctx.sizes.polls_execution_seconds
    with running(ctx, "polls", seconds, ["batch"]) as run:
        run.drop_batch("batch", count)
        results = run.results("batch", count, ctx.sizes.stall_seconds + seconds)
        stats = run.emulator.stats()
    _check_no_errors(results, "polls")
    gets, delays = [], []
    for path in results:
        execution_id = json.loads(path.read_text())["execution_id"]
        gets.append(stats["gets_by_execution"].get(execution_id, 0))
        delays.append(mtime(path) - stats["completed_at"][execution_id])
    note = f"{count} docs, {seconds:g} s executions, {ctx.limits()}"
    return [
        Figure(
            "polls",
            "polls_per_doc",
            f"status polls per doc ({seconds:g} s executions)",
            statistics.mean(gets),
            "",
            Target("<=", 2),
            note,
        ),
        Figure("polls", "polls_per_doc_max", "status polls, most for one doc", max(gets), ""),
        Figure(
            "polls",
            "completion_delay_p50_s",
            "completion → result file, p50",
            percentile(delays, 0.5),
            "s",
        ),
        Figure(
            "polls",
            "completion_delay_p95_s",
            "completion → result file, p95",
            percentile(delays, 0.95),
            "s",
            Target("<", 0.5),
        ),
    ]


# -- latency --------------------------------------------------------------------------------


def latency(ctx: Context) -> list[Figure]:
    """One document at a time: drop → result file, minus settle_seconds."""
    count = ctx.sizes.latency_docs
    rng = random.Random(20240601)
    samples: list[float] = []
    with running(ctx, "latency", 0.0, ["single"]) as run:
        folder, output = run.layout.watch_dir / "single", run.layout.output_dir / "single"
        for name, content in zip(doc_names(count), make_documents(count), strict=True):
            time.sleep(rng.uniform(0.05, 0.3))  # do not line up with the daemon's own timers
            dropped = drop(folder, [name], [content])
            result = _wait_for_result(output / name, ctx.sizes.stall_seconds, run.daemon)
            samples.append(mtime(result) - dropped - ctx.settle_seconds)
    note = f"{count} docs one at a time, 0 s executions, settle_seconds = {ctx.settle_seconds}"
    return [
        Figure(
            "latency",
            "latency_p50_ms",
            "drop → result - settle, p50",
            1000 * percentile(samples, 0.5),
            "ms",
            Target("<", 50),
            note,
        ),
        Figure(
            "latency",
            "latency_p95_ms",
            "drop → result - settle, p95",
            1000 * percentile(samples, 0.95),
            "ms",
            Target("<", 150),
        ),
    ]


def _wait_for_result(source: Path, timeout: float, daemon: Daemon) -> Path:
    """The result file of one document, as soon as it appears (an error file fails)."""
    result = source.with_name(f"{source.name}.json")
    failed = source.with_name(f"{source.name}.error.json")
    wait_until(
        lambda: result.exists() or failed.exists(),
        timeout,
        f"the result of {source.name}",
        alive=daemon.proc,
        step=0.002,
    )
    if failed.exists():
        raise BenchError(f"{source.name} got an error file")
    return result


# -- memory and idle ------------------------------------------------------------------------


def memory_and_idle(ctx: Context) -> list[Figure]:
    """Peak RSS over batches of documents, then CPU while idle with them in the tree."""
    sizes = ctx.sizes
    folders = [f"batch-{index}" for index in range(sizes.memory_batches)]
    peaks: list[int] = []  # VmHWM after each batch, KiB
    rss: list[int] = []  # VmRSS after each batch, KiB
    with running(ctx, "memory", 0.0, folders) as run:
        for folder in folders:
            run.drop_batch(folder, sizes.memory_batch_docs)
            results = run.results(folder, sizes.memory_batch_docs, sizes.stall_seconds)
            _check_no_errors(results, "memory")
            peaks.append(run.daemon.status_kib("VmHWM"))
            rss.append(run.daemon.status_kib("VmRSS"))
        idle_cpu = _idle_cpu(ctx, run.daemon)
        ctx.processed = run.layout
    idle = Figure(
        "idle",
        "idle_cpu_s_per_min",
        f"idle CPU with {len(folders) * sizes.memory_batch_docs + 1} docs in the tree",
        60 * idle_cpu / sizes.idle_seconds,
        "s/min",
        Target("<", 0.1),
        f"utime+stime over {sizes.idle_seconds:g} s, scaled to a minute",
    )
    return [*_memory_figures(ctx, peaks, rss), idle]


def _memory_figures(ctx: Context, peaks: list[int], rss: list[int]) -> list[Figure]:
    first = ctx.sizes.memory_batch_docs
    total = first * len(peaks)
    growth = (peaks[-1] - peaks[0]) / 1024
    percent = 100 * (peaks[-1] - peaks[0]) / peaks[0]
    slope = (rss[-1] - rss[0]) / 1024 / max(1, len(rss) - 1) * 1000 / first
    shown = ", ".join(f"{p / 1024:.0f}" for p in peaks)
    return [
        Figure(
            "memory",
            "peak_rss_mb",
            f"peak RSS (VmHWM), {total} docs",
            peaks[-1] / 1024,
            "MiB",
            Target("<", 80),
            f"VmHWM after each batch of {first} (MiB): {shown}",
        ),
        Figure(
            "memory",
            "peak_rss_at_first_batch_mb",
            f"peak RSS after {first} docs",
            peaks[0] / 1024,
            "MiB",
        ),
        Figure(
            "memory",
            "rss_growth_mib",
            f"peak RSS growth {first} → {total} docs",
            growth,
            "MiB",
            Target("<", 5),
            f"VmHWM after the last batch minus after the first ({percent:+.1f} %)",
        ),
        Figure(
            "memory",
            "rss_mib_per_1000_docs",
            "RSS growth per 1000 more docs",
            slope,
            "MiB",
            note="VmRSS slope from the first batch to the last",
        ),
    ]


def _idle_cpu(ctx: Context, daemon: Daemon) -> float:
    time.sleep(2.0)  # let the last loops go back to sleep
    ctx.say(f"idle: measuring CPU of pid {daemon.pid} for {ctx.sizes.idle_seconds:g} s")
    before = daemon.cpu_seconds()
    time.sleep(ctx.sizes.idle_seconds)
    return daemon.cpu_seconds() - before


# -- restart --------------------------------------------------------------------------------


def restart(ctx: Context) -> list[Figure]:
    """Start over a processed tree of each size: to READY=1 / `started`, to a new doc's result."""
    layout = ctx.processed or _seed(ctx)
    first, *more = ctx.sizes.restart_docs
    figures = _restart_figures(_restart_once(ctx, layout, first))
    for docs in more:  # a bigger tree, as an extra line: the judged figure is the first size's
        figures.append(_restart_more_figure(_restart_once(ctx, layout, docs)))
    return figures


class RestartRun(NamedTuple):
    daemon: Daemon
    ready: float  # start → the new document's result, minus settle_seconds
    notified_at: float | None
    reads: tuple[float, float]  # MiB read by the daemon, MiB of database
    posts: int
    rss: float
    docs: int


def _restart_once(ctx: Context, layout: Layout, docs: int) -> RestartRun:
    built = time.monotonic()
    added = grow(layout, docs)
    ctx.say(f"restart: {added} processed documents cloned in {time.monotonic() - built:.1f} s")
    fresh = f"fresh-{docs}"
    drop(layout.watch_dir / fresh, ["new-000000.pdf"], make_documents(1))
    log = layout.home / f"emulator-restart-{docs}.log"
    emulator = start_emulator(ctx.procs, log, 0.0, ctx.org_limit)
    notify = NotifyListener()
    daemon = start_daemon(
        ctx.procs,
        layout.with_url(emulator.deployment_url, "info"),
        f"daemon-restart-{docs}.log",
        env=notify.env,
    )
    ctx.say(f"restart: daemon pid {daemon.pid} over {docs} processed documents")
    try:
        results = wait_for_results(layout.output_dir / fresh, 1, daemon, ctx.sizes.stall_seconds)
        ready = mtime(results[0]) - daemon.started_at - layout.settle_seconds
        reads = (daemon.io_bytes("rchar") / MIB, layout.db_path.stat().st_size / MIB)
        rss = daemon.status_kib("VmRSS") / 1024
        posts = emulator.stats()["posts"]
    finally:
        ctx.finish_daemon("restart", daemon)
        ctx.procs.stop(emulator.proc)
        notify.close()
    return RestartRun(daemon, ready, notify.ready_at, reads, posts, rss, docs)


def _restart_more_figure(run: RestartRun) -> Figure:
    return Figure(
        "restart",
        f"restart_ready_{run.docs}_s",
        f"start → new doc's result - settle, {run.docs} docs",
        run.ready,
        "s",
        note=f"the same over a bigger tree, not judged; {run.posts - 1} documents uploaded again",
    )


def _restart_figures(run: RestartRun) -> list[Figure]:
    daemon, ready, notified_at, reads, posts, rss, docs = run
    started_line = daemon.event_time("started")
    started = float("nan") if started_line is None else started_line - daemon.started_at
    notified = float("nan") if notified_at is None else notified_at - daemon.started_at
    return [
        Figure(
            "restart",
            "restart_ready_s",
            "start → new doc's result - settle",
            ready,
            "s",
            Target("<", 0.5),
            f"the reported figure: {docs} processed docs in tree and database; the new doc "
            "was dropped before the start, so this covers the whole startup scan",
        ),
        Figure(
            "restart",
            "restart_started_log_s",
            "start → `started` log line",
            started,
            "s",
            Target("<", 0.5),
            "logged before the startup scan runs",
        ),
        Figure(
            "restart",
            "restart_notify_ready_s",
            "start → sd_notify READY=1",
            notified,
            "s",
            note="sent right after `started`, also before the startup scan",
        ),
        Figure(
            "restart",
            "restart_read_mib",
            "bytes read by the daemon until ready",
            reads[0],
            "MiB",
            note=f"the sources are {docs * 4 / 1024:.0f} MiB, the database "
            f"{reads[1]:.0f} MiB; reading less than sources + database means the sources were "
            "not re-hashed (the count also holds Python's modules)",
        ),
        Figure(
            "restart",
            "restart_reuploads",
            "documents uploaded again",
            posts - 1,
            "",
            Target("==", 0),
        ),
        Figure("restart", "restart_rss_mb", "RSS when ready", rss, "MiB"),
    ]


def _seed(ctx: Context) -> Layout:
    """Process a few documents for real with `run --once` (when `memory` did not run)."""
    count = ctx.sizes.restart_seed_docs
    home = ctx.home("restart")
    emulator = start_emulator(ctx.procs, home / "emulator-seed.log", 0.0, ctx.org_limit)
    layout = ctx.layout(home, emulator.deployment_url)
    layout.write_config()
    for start in range(0, count, FOLDER_DOCS):
        chunk = min(FOLDER_DOCS, count - start)
        drop(
            layout.watch_dir / f"seed-{start // FOLDER_DOCS:03d}",
            doc_names(chunk, f"seed-{start:06d}"),
            make_documents(chunk),
        )
    ctx.say(f"restart: processing {count} seed documents with run --once")
    daemon = start_daemon(ctx.procs, layout, "daemon-seed.log", once=True)
    try:
        code = daemon.proc.wait(timeout=max(120.0, count * 0.5))
    finally:
        ctx.procs.stop(daemon.proc)
        ctx.procs.stop(emulator.proc)
    if code != 0:
        raise BenchError(f"run --once over the seed documents exited {code}")
    return layout
