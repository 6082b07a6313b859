"""The `unstract-watcher` command: one function per subcommand, each returning an exit code.

One error boundary (`main`) turns our exceptions into one stderr message; a traceback is shown
only with log_level = debug.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from types import FrameType

from watcher import check, commands
from watcher import config as config_module
from watcher.config import ConfigError, Settings
from watcher.daemon import Daemon, Outcome
from watcher.demo import run_demo
from watcher.explain import explain
from watcher.jobs import JobState
from watcher.logs import configure, get_logger
from watcher.progress import progress_bar
from watcher.store import Store, StoreError
from watcher.store.operator import NotSetUp, open_existing

EXIT_OK = 0
EXIT_DOCUMENTS_FAILED = 1  # run --once: at least one document ended with an error file
EXIT_NOT_FOUND = 1  # jobs show / retry: no such job, or it cannot be retried
EXIT_CONFIG = 2  # the config (or the command line) is wrong
EXIT_NO_INPUT = 66  # run --once: a watched folder could not be listed
EXIT_UNAVAILABLE = 69  # the database cannot be reached
EXIT_SOFTWARE = 70  # a daemon loop crashed (systemd restarts us)
EXIT_CANT_WRITE = 73  # run --once: result files could not be written (they stay stored)
EXIT_PIPELINE_PAUSED = 75  # run --once: the API refused a pipeline's key or deployment

log = get_logger()


def _config_path(args: argparse.Namespace) -> Path:
    return Path(
        args.config
        or os.environ.get("UNSTRACT_WATCHER_CONFIG", "")
        or config_module.DEFAULT_CONFIG_PATH
    )


def _load(args: argparse.Namespace) -> Settings:
    path = _config_path(args)
    settings = config_module.load(path)
    configure(settings.daemon.log_level, settings.daemon.log_format)
    for warning in check.secret_warnings(settings, path):
        log.warning(warning)
    return settings


def _open_store(settings: Settings, apart: bool = False) -> Store:
    """The database, its schema upgraded to the newest first; `apart`: in a child process
    (the daemon's: alembic would stay in its memory for good)."""
    store = Store(settings.database.url, settings.database.busy_timeout_seconds)
    if apart:
        store.upgrade_apart()
    else:
        store.upgrade()
    return store


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args)
    store = _open_store(settings, apart=True)
    path = _config_path(args)
    try:
        return run_daemon(
            settings, store, once=args.once, load_settings=lambda: config_module.load(path)
        )
    finally:
        store.close()


def run_daemon(
    settings: Settings,
    store: Store,
    once: bool,
    load_settings: Callable[[], Settings] | None = None,
) -> int:
    """Run the daemon (or drain once) with signal handlers installed; return the exit code."""
    daemon = Daemon(settings, store)

    # Signal handlers only set events: logging here could deadlock on the log's own lock.
    def on_reload(_signum: int, _frame: FrameType | None) -> None:
        daemon.request_reload()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        daemon.stop()

    daemon.doorbell.ring_on_signals()  # the main loop sleeps until it has something to do
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_reload)
    try:
        with progress_bar() if once else nullcontext() as bar:
            outcome = daemon.run(once=once, load_settings=load_settings, each_round=bar)
    finally:  # also when the start fails: signals get their wakeup fd back
        daemon.doorbell.close()
    return exit_code(outcome, once)


def exit_code(outcome: Outcome, once: bool) -> int:
    """A crashed loop, or (`run --once`) a paused pipeline, held jobs, failed documents."""
    if outcome.failure is not None:
        return EXIT_SOFTWARE
    if not once:
        return EXIT_OK
    for name, reason in outcome.paused.items():
        print(
            f"unstract-watcher: pipeline {name} paused: {reason}; its documents stay "
            "queued for a run once that is fixed",
            file=sys.stderr,
        )
    if outcome.paused:
        return EXIT_PIPELINE_PAUSED
    return _folder_trouble(outcome) or _documents(outcome)


def _folder_trouble(outcome: Outcome) -> int:
    """`run --once`: results it could not write, folders it could not list (0: none)."""
    for problem in outcome.unwritable:
        print(
            f"unstract-watcher: {problem}; the results stay stored and the next run writes them",
            file=sys.stderr,
        )
    for folder in outcome.unlisted:
        print(
            f"unstract-watcher: cannot list {folder}; its documents were not seen", file=sys.stderr
        )
    if outcome.unwritable:
        return EXIT_CANT_WRITE
    return EXIT_NO_INPUT if outcome.unlisted else EXIT_OK


def _documents(outcome: Outcome) -> int:
    if outcome.held:
        print(
            f"unstract-watcher: {outcome.held} job(s) held with an unknown upload outcome; "
            "see `jobs list --state held`",
            file=sys.stderr,
        )
    return EXIT_DOCUMENTS_FAILED if outcome.failed or outcome.held else EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    settings = config_module.load(path, skip_systemd_credentials=True)
    print("\n".join(check.summary(settings, path)))
    print("config OK")
    code = EXIT_OK if args.explain is None else explain_file(settings, Path(args.explain))
    if not args.online:
        return code
    ok, lines = check.online(settings)
    print("\n".join(lines))
    if not ok:
        print("unstract-watcher: the online check failed; see the FAILED lines", file=sys.stderr)
        return EXIT_CONFIG
    return code


def explain_file(settings: Settings, path: Path) -> int:
    """check-config --explain: which pipeline takes the file, or why none does."""
    taken, lines = explain(settings, path)
    print("\n".join(lines))
    return EXIT_OK if taken else EXIT_NOT_FOUND


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _load(args)
    _open_store(settings).close()
    print("database schema is up to date")
    return EXIT_OK


def _operator_settings(args: argparse.Namespace) -> Settings:
    # Operator commands need the database, not the API keys (which only the service can read).
    return config_module.load(_config_path(args), check_environment_too=False)


def _operator_store(args: argparse.Namespace, settings: Settings | None = None) -> Store:
    """The database the daemon set up, as it is: never created or migrated here."""
    database = (settings or _operator_settings(args)).database
    try:
        return open_existing(database.url, database.busy_timeout_seconds)
    except NotSetUp as exc:
        raise StoreError(
            f"database.url = {check.redacted(database.url)}: {exc}; is this the service's config? "
            f"Run `unstract-watcher db upgrade --config {_config_path(args)}` or start the "
            "daemon first"
        ) from None
    except StoreError as exc:
        raise StoreError(f"database.url = {check.redacted(database.url)}: {exc}") from None


def _since(args: argparse.Namespace) -> float | None:
    try:
        return commands.parse_since(args.since)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _filters(args: argparse.Namespace) -> dict[str, object]:
    return {
        "state": getattr(args, "state", None),
        "pipeline": args.pipeline,
        "since": _since(args),
        "limit": getattr(args, "limit", None),
    }


def cmd_status(args: argparse.Namespace) -> int:
    settings = _operator_settings(args)
    store = _operator_store(args, settings)
    print(commands.status(store, [p.name for p in settings.pipelines], args.json))
    store.close()
    return EXIT_OK


def cmd_jobs_list(args: argparse.Namespace) -> int:
    store = _operator_store(args)
    print(commands.jobs_list(store, _filters(args), args.json, full=args.full))
    store.close()
    return EXIT_OK


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from watcher.runtime import placement_for

    settings = _operator_settings(args)
    store = _operator_store(args, settings)
    placements = {p.name: placement_for(p) for p in settings.pipelines}
    shown = commands.jobs_show(store, args.id, args.json, placements)
    store.close()
    if shown is None:
        print(f"unstract-watcher: no job {args.id}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(shown)
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.pipeline is None):
        raise ConfigError("retry: give a job id, or --pipeline NAME to retry all its failed jobs")
    settings = _operator_settings(args)
    store = _operator_store(args, settings)
    pipelines = {p.name: p for p in settings.pipelines}
    try:
        if args.id is not None:
            count, lines = 1, commands.retry_job(store, pipelines, args.id)
        else:
            count, lines = commands.retry_pipeline(store, pipelines, args.pipeline)
    except commands.RetryRefused as exc:
        print(f"unstract-watcher: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    finally:
        store.close()
    print("\n".join(lines))
    return EXIT_OK if count else EXIT_NOT_FOUND


def cmd_report(args: argparse.Namespace) -> int:
    store = _operator_store(args)
    sys.stdout.write(commands.report(store, _filters(args), args.format))
    store.close()
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from watcher.export import Selection, export, output_file, summary_line
    from watcher.runtime import placement_for

    settings = _operator_settings(args)
    if args.pipeline and args.pipeline not in {p.name for p in settings.pipelines}:
        raise ConfigError(f"--pipeline {args.pipeline}: no such pipeline in the config")
    selection = Selection(args.state, args.pipeline, _since(args))
    placements = {p.name: placement_for(p) for p in settings.pipelines}
    store = _operator_store(args, settings)
    complain = partial(print, file=sys.stderr)
    try:
        if args.output:
            target = Path(args.output)
            with output_file(target) as out:
                tally = export(
                    store, placements, selection, args.format, out, complain, target.parent
                )
        else:
            tally = export(store, placements, selection, args.format, sys.stdout, complain)
    finally:
        store.close()
    print(summary_line(tally), file=sys.stderr)
    return EXIT_NOT_FOUND if tally.unreadable else EXIT_OK


def cmd_emulator(args: argparse.Namespace) -> int:
    from watcher.emulator import (
        DEMO_API,
        DEMO_KEY,
        DEMO_ORG,
        LLMW_DEMO_KEY,
        demo_emulator,
        llmwhisperer_demo_emulator,
    )
    from watcher.emulator.server import serve_forever

    emulator = demo_emulator(
        execution_seconds=args.execution_seconds,
        org_limit=args.org_limit,
        max_parallel_file_batches=args.max_parallel_file_batches,
    )
    whisperer = llmwhisperer_demo_emulator(
        processing_seconds=args.execution_seconds, status_generation=args.status_generation
    )
    base = f"http://{args.host}:{args.port}"
    print(f"API emulator on {base} (demo keys; put them in the variable named by api_key_env)")
    print(f'  Unstract:     url = "{base}/deployment/api/{DEMO_ORG}/{DEMO_API}/"  key {DEMO_KEY}')
    print(f'  LLMWhisperer: url = "{base}/api/v2"  key {LLMW_DEMO_KEY}')
    print("Stop it with Ctrl-C.", flush=True)
    try:
        serve_forever(emulator, args.host, args.port, llmwhisperer=whisperer)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.dir), run_config_once, port=args.port, serve=args.serve)


def run_config_once(config_path: Path) -> int:
    """`run --once` of a config file (the demo's)."""
    settings = config_module.load(config_path)
    configure(settings.daemon.log_level, settings.daemon.log_format)
    store = _open_store(settings)
    try:
        return run_daemon(settings, store, once=True)
    finally:
        store.close()


# The emulator's epilog (the demo's keys and URLs) is made only when its help is shown: the
# emulator's package (its server, uvloop) would otherwise load into every command, the daemon's
# included.
_DEMO_EPILOG = "(the demo's keys and URLs)"


class _EmulatorHelp(argparse.RawDescriptionHelpFormatter):
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text == _DEMO_EPILOG:
            from watcher.emulator.demo import demo_help

            text = demo_help()
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unstract-watcher",
        description="Watch drop folders and turn documents into structured JSON with Unstract.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = (
        "config file (default: $UNSTRACT_WATCHER_CONFIG or /etc/unstract-watcher/config.toml)"
    )

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", help=config_help)
    run.add_argument(
        "--once",
        action="store_true",
        help="process what is there now, then exit (1 if any document failed)",
    )
    run.set_defaults(func=cmd_run)

    checking = sub.add_parser("check-config", help="validate the config file and exit")
    checking.add_argument("--config", help=config_help)
    checking.add_argument(
        "--online",
        action="store_true",
        help="also prove each pipeline's URL and key with a call that creates nothing and "
        "costs nothing (exit 2 if one fails)",
    )
    checking.add_argument(
        "--explain",
        metavar="PATH",
        help="tell which pipeline takes this file, or why none does (exit 1 if none)",
    )
    checking.set_defaults(func=cmd_check_config)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="create or upgrade the job table schema")
    upgrade.add_argument("--config", help=config_help)
    upgrade.set_defaults(func=cmd_db_upgrade)

    emulator = sub.add_parser(
        "emulator",
        help="serve the built-in emulator of both APIs, with demo keys",
        epilog=_DEMO_EPILOG,
        formatter_class=_EmulatorHelp,
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8765)
    emulator.add_argument(
        "--execution-seconds", type=float, default=1.0, help="how long each emulated execution runs"
    )
    emulator.add_argument(
        "--org-limit", type=int, default=20, help="concurrent executions allowed before 429"
    )
    emulator.add_argument(
        "--max-parallel-file-batches",
        type=int,
        default=4,
        help="the server's MAX_PARALLEL_FILE_BATCHES: the files of one execution run in this "
        "many parallel batches (an execution of n files takes ceil(n / batches) file times)",
    )
    emulator.add_argument(
        "--status-generation",
        choices=["current", "legacy"],
        default="current",
        help="which LLMWhisperer status vocabulary to speak",
    )
    emulator.set_defaults(func=cmd_emulator)

    status = sub.add_parser("status", help="per pipeline: jobs by state, in flight, paused")
    status.add_argument("--config", help=config_help)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="look at jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_sub.add_parser("list", help="jobs, newest first")
    listing.add_argument("--config", help=config_help)
    listing.add_argument("--state", choices=[s.value for s in JobState])
    listing.add_argument("--pipeline")
    listing.add_argument("--since", help="created within 30m / 2h / 7d, or since an ISO date")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--full", action="store_true", help="errors in full, not cut")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_jobs_list)
    show = jobs_sub.add_parser("show", help="one job, with the stored API answer (--json)")
    show.add_argument("id", type=int)
    show.add_argument("--config", help=config_help)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_jobs_show)

    retry = sub.add_parser("retry", help="queue a failed, skipped or held job again")
    retry.add_argument("id", type=int, nargs="?", help="the job id (see jobs list)")
    retry.add_argument("--pipeline", help="instead of an id: every failed job of a pipeline")
    retry.add_argument("--config", help=config_help)
    retry.set_defaults(func=cmd_retry)

    report = sub.add_parser("report", help="CSV or JSON of documents: status, times, costs")
    report.add_argument("--config", help=config_help)
    report.add_argument("--format", choices=["csv", "json"], default="csv")
    report.add_argument("--pipeline")
    report.add_argument("--since", help="created within 30m / 2h / 7d, or since an ISO date")
    report.set_defaults(func=cmd_report)

    exporting = sub.add_parser("export", help="one CSV/JSONL table of results from their files")
    exporting.add_argument("--config", help=config_help)
    exporting.add_argument("--pipeline")
    exporting.add_argument("--since", help="finished within 30m / 2h / 7d, or since an ISO date")
    exporting.add_argument("--state", choices=["done", "failed", "all"], default="all")
    exporting.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    exporting.add_argument("--output", help="write to this file (default: standard output)")
    exporting.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="try it: sample documents, the emulator and SQLite")
    demo.add_argument("--dir", default="unstract-watcher-demo", help="where the demo works")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep the emulator up afterwards (Ctrl-C stops it), so that the "
        "demo's config.toml can be run again as its first lines say",
    )
    demo.add_argument(
        "--port", type=int, help="the emulator's port (default 8765, or a free one if taken)"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"unstract-watcher: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"unstract-watcher: database unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
