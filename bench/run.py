"""Benchmark of unstract-watcher: the real daemon against the emulator, both as processes.

    .venv/bin/python bench/run.py                  # full run (a few minutes), figures vs targets
    .venv/bin/python bench/run.py --smoke          # tiny sizes for CI (< 1 min), nothing judged
    .venv/bin/python bench/run.py --only latency,restart

Prints a table, then one JSON line with every figure. Exit code: 0 when every scenario finished
(1 if one did not; with --fail-on-miss also 1 when a figure misses its target; 130 on Ctrl-C).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

from backlog import backlog
from bigdocs import big_documents
from burst import burst
from harness import Override, Processes, compile_daemon
from pipelines import pipelines
from report import Figure, Report
from scale import scale
from scenarios import (
    FULL,
    SERVER_LIMIT,
    SMOKE,
    Context,
    emulator_alone,
    latency,
    memory_and_idle,
    polls,
    restart,
    saturation,
    throughput,
)

Scenario = Callable[[Context], list[Figure]]
SCENARIOS: dict[str, Scenario] = {
    "emulator": emulator_alone,
    "throughput": throughput,
    "saturation": saturation,
    "backlog": backlog,  # several documents per execution
    "polls": polls,
    "latency": latency,
    "memory": memory_and_idle,  # also measures idle CPU, and leaves the tree for restart
    "restart": restart,
    "scale": scale,  # grows the tree restart leaves (or a seed run's) to scale_docs
    "burst": burst,  # documents written in place, many at once
    "bigdocs": big_documents,  # memory and upload rate with documents of 48 MiB and 2 GiB
    "pipelines": pipelines,  # threads, inotify instances, RSS, start at 1, 50, 150 pipelines
}
ALIASES = {"idle": "memory"}
SETTLE_SECONDS = 0.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = ", ".join([*SCENARIOS, *ALIASES])
    parser = argparse.ArgumentParser(description="Benchmark the unstract-watcher daemon.")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; timings not judged")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios: {names}")
    parser.add_argument(
        "--workdir", help="where to work, kept afterwards (default: a new temp folder, removed)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument("--json", dest="json_path", help="also write the JSON line to this file")
    parser.add_argument(
        "--fail-on-miss", action="store_true", help="exit 1 when a figure misses its target"
    )
    parser.add_argument(
        "--org-limit",
        type=int,
        default=SERVER_LIMIT,
        help="the emulator's concurrent executions per organisation",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        type=override,
        help="what-if: change a config key (TABLE: daemon, database, pipeline or api; VALUE in "
        "TOML), "
        "e.g. --set api.poll_initial_seconds=0.05",
    )
    parser.add_argument(
        "--scale-docs",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="the scale scenario's sizes of cloned history, comma-separated (a run shorter "
        "than the standard one; its figures say so)",
    )
    parser.add_argument(
        "--scale-burst", type=int, help="documents written in place by the scale scenario"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=SETTLE_SECONDS,
        help="the daemon's settle_seconds in every scenario",
    )
    return parser.parse_args(argv)


def override(text: str) -> Override:
    """TABLE.KEY=VALUE from the command line; VALUE is TOML (a bare word is a string)."""
    name, separator, raw = text.partition("=")
    table, dot, key = name.partition(".")
    if not (separator and dot and key) or table not in ("daemon", "database", "pipeline", "api"):
        raise argparse.ArgumentTypeError(
            f"expected daemon|database|pipeline|api.KEY=VALUE, not {text!r}"
        )
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return table, key, value


def selected(only: str) -> list[str]:
    if not only:
        return list(SCENARIOS)
    wanted = {ALIASES.get(name.strip(), name.strip()) for name in only.split(",") if name.strip()}
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return [name for name in SCENARIOS if name in wanted]  # in the usual order


def run_scenario(ctx: Context, report: Report, name: str) -> None:
    ctx.say(f"{name}: starting")
    started = time.monotonic()
    try:
        report.add(SCENARIOS[name](ctx))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        report.errors[name] = f"{type(exc).__name__}: {exc}"
    ctx.say(f"{name}: done in {time.monotonic() - started:.1f} s")


def _settings(args: argparse.Namespace) -> dict[str, object]:
    """What the run used, when it differs from the benchmark's standard settings."""
    settings: dict[str, object] = {f"{t}.{k}": v for t, k, v in args.overrides}
    if args.scale_docs:
        settings["scale_docs"] = list(args.scale_docs)
    if args.scale_burst:
        settings["scale_burst"] = args.scale_burst
    if args.org_limit != SERVER_LIMIT:
        settings["emulator.org_limit"] = args.org_limit
    if args.settle_seconds != SETTLE_SECONDS:
        settings["pipeline.settle_seconds"] = args.settle_seconds
    return settings


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args.only)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, _terminate)
    procs = Processes()
    report = Report(smoke=args.smoke, settings=_settings(args))
    started = time.monotonic()
    interrupted = False
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="unstract-watcher-bench-")).resolve()
    sizes = SMOKE if args.smoke else FULL
    if args.scale_docs:
        sizes = replace(sizes, scale_docs=args.scale_docs)
    if args.scale_burst:
        sizes = replace(sizes, scale_burst_docs=args.scale_burst)
    ctx = Context(
        workdir,
        procs,
        sizes,
        args.settle_seconds,
        args.org_limit,
        tuple(args.overrides),
    )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        compile_daemon()
        for name in names:
            run_scenario(ctx, report, name)
    except KeyboardInterrupt:
        interrupted = True
        print("[bench] interrupted; stopping the daemon and the emulator", file=sys.stderr)
    finally:
        _clean_up(procs, workdir, remove=not (args.keep or args.workdir))
    report.seconds = time.monotonic() - started
    report.problems.extend(ctx.problems)
    return _print(report, args, interrupted)


def _clean_up(procs: Processes, workdir: Path, remove: bool) -> None:
    """Stop every child (a second Ctrl-C must not cut this short), then drop our temp folder."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    procs.stop_all()
    if remove:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"[bench] work folder kept: {workdir}", file=sys.stderr)


def _print(report: Report, args: argparse.Namespace, interrupted: bool) -> int:
    line = json.dumps(report.as_json(), ensure_ascii=False)
    print(report.table())
    print(line, flush=True)
    if args.json_path:
        Path(args.json_path).write_text(line + "\n")
    if interrupted:
        return 130
    if report.errors:
        return 1
    judged = not report.smoke
    missed = any(f.verdict(judged) == "miss" for f in report.figures)
    return 1 if args.fail_on_miss and missed else 0


if __name__ == "__main__":
    sys.exit(main())
