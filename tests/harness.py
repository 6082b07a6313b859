"""Helpers for end-to-end tests: a config on disk, the emulator, and waiting without sleeping blind."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_jobs import job

from watcher import config as config_module
from watcher.config import DEFAULT_INCLUDE, Settings
from watcher.context import Context, Live, Wakes
from watcher.daemon import Daemon
from watcher.document_stream import DocumentStream, open_document
from watcher.emulator import DEMO_API, DEMO_KEY, DEMO_ORG, EmulatorServer
from watcher.filters import FileFilter
from watcher.metrics import Metrics
from watcher.runtime import Pipeline
from watcher.store import KnownFile, Store
from watcher.watch import Discovered, FolderWatcher

KEY_ENV = "TEST_UNSTRACT_API_KEY"
LLMW_KEY_ENV = "TEST_LLMWHISPERER_KEY"


def write_config(
    folder: Path,
    url: str,
    db_url: str,
    pipeline: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    daemon: dict[str, Any] | None = None,
    database: dict[str, Any] | None = None,
) -> Path:
    """A config file for one pipeline watching folder/drop; keys of the four tables override."""
    drop = folder / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    pipeline_table = {
        "name": "docs",
        "watch_dir": str(drop),
        "settle_seconds": 0.3,
        "rescan_seconds": 30.0,
        **(pipeline or {}),
    }
    api_table = {
        "url": url,
        "api_key_env": KEY_ENV,
        "tags": ["tests"],
        "max_in_flight": 10,
        "poll_initial_seconds": 0.1,
        "poll_max_seconds": 1.0,
        **(api or {}),
    }
    # A stable instance id: a restart takes back its own claims at once (on PostgreSQL too).
    daemon_table = {
        "upload_workers": 4,
        "log_format": "json",
        "log_level": "info",
        "drain_seconds": 5.0,
        "instance_id": "test-instance",
        **(daemon or {}),
    }
    lines = [
        "[database]",
        *_pairs({"url": db_url, **(database or {})}),
        "",
        "[daemon]",
        *_pairs(daemon_table),
        "\n[[pipelines]]",
        *_pairs(pipeline_table),
        "\n[pipelines.api]",
        *_pairs(api_table),
    ]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pipelines_config(folder: Path, url: str, db_url: str, count: int) -> Path:
    """A config of `count` pipelines (p000, p001, ...), each watching folder/drops/<name>;
    the tables of `write_config` otherwise."""
    path = write_config(folder, url, db_url)
    head, pipeline = path.read_text().split("\n[[pipelines]]\n")
    drop = json.dumps(str(folder / "drop"))
    tables = []
    for index in range(count):
        name = pipeline_name(index)
        (folder / "drops" / name).mkdir(parents=True)
        watch_dir = json.dumps(str(folder / "drops" / name))
        table = pipeline.replace('"docs"', f'"{name}"').replace(drop, watch_dir)
        tables.append("\n[[pipelines]]\n" + table)
    path.write_text(head + "".join(tables))
    return path


def pipeline_name(index: int) -> str:
    return f"p{index:03}"


def _pairs(table: dict[str, Any]) -> list[str]:
    return [f"{key} = {json.dumps(value)}" for key, value in table.items()]


def deployment_url(server: EmulatorServer) -> str:
    return server.deployment_url(DEMO_ORG, DEMO_API)


@contextmanager
def running_daemon(
    config_path: Path,
    watch_events: bool = True,
    load_settings: Callable[[], Settings] | None = None,
) -> Iterator[Daemon]:
    """The daemon's own main loop (`Daemon.run`) in a thread, stopped and joined at the end."""
    settings = config_module.load(config_path)
    store = Store(settings.database.url)
    store.upgrade()
    daemon = Daemon(settings, store)
    raised: list[BaseException] = []

    def serve() -> None:
        try:
            daemon.run(load_settings=load_settings, watch_events=watch_events)
        except BaseException as exc:
            raised.append(exc)

    serving = threading.Thread(target=serve, name="main")
    serving.start()
    try:
        wait_for(lambda: daemon.started.is_set() or not serving.is_alive(), what="the start")
        if raised:
            raise raised[0]
        yield daemon
    finally:
        daemon.stop()
        serving.join()
        store.close()


@contextmanager
def mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A small tmpfs made at `folder` (`mount -o options`), unmounted at the end; the test
    is skipped without root, which mounting needs (CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


SENTINEL = "zz-sentinel.pdf"


def let_discovery_catch_up(daemon: Daemon, drop: Path, results: Path | None = None) -> None:
    """A positive signal before asserting that nothing else happened: an empty file dropped
    now gets its error file (without any API call) only once the watcher has settled and
    queued what it saw before it; then every job queued by then is finished. The sentinel
    and its error file are removed again, so the trees are as they were."""
    source = drop / SENTINEL
    error_file = (results or drop) / f"{SENTINEL}.error.json"
    source.write_bytes(b"")
    wait_for(error_file.exists, what="the sentinel's error file")
    wait_for(lambda: daemon.progress().unfinished == 0, what="all jobs finished")
    source.unlink()
    error_file.unlink()


def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Times of every full listing of a drop folder from now on, when it got to its end
    (the real scan still runs, a slice at a time)."""
    scans: list[float] = []
    real_scan_some = FolderWatcher.scan_some

    def scan_some(watcher: FolderWatcher, now: float, budget_seconds: float | None = None) -> None:
        listing = watcher.scanning
        real_scan_some(watcher, now, budget_seconds)
        if listing and not watcher.scanning:
            scans.append(now)

    monkeypatch.setattr(FolderWatcher, "scan_some", scan_some)
    return scans


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results_under(folder: Path) -> dict[str, dict[str, Any]]:
    """Result and error files under a folder, by path relative to it."""
    return {
        path.relative_to(folder).as_posix(): json.loads(path.read_text())
        for path in folder.rglob("*.json")
    }


def daemon_command(config: Path, once: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "watcher.cli",
        "run",
        "--config",
        str(config),
        *(["--once"] if once else []),
    ]


def environment(crash_at: str = "") -> dict[str, str]:
    env = {**os.environ, KEY_ENV: api_key()}
    env.pop("UNSTRACT_WATCHER_CRASH_AT", None)
    if crash_at:
        env["UNSTRACT_WATCHER_CRASH_AT"] = crash_at
    return env


def drop_documents(drop: Path, count: int) -> dict[str, str]:
    """Write `count` documents; return relative path -> sha256."""
    written = {}
    for index in range(count):
        folder = drop / f"batch-{index % 4}"
        folder.mkdir(exist_ok=True)
        path = folder / f"doc-{index:04}.txt"
        path.write_bytes(f"document {index}\n".encode() * (1 + index % 7))
        written[path.relative_to(drop).as_posix()] = sha256(path)
    return written


def kill_9_repeatedly(config: Path, times: int, seed: int) -> None:
    """Start the daemon as a process and SIGKILL it after 0.5 to 1.5 s, `times` times over."""
    chance = random.Random(seed)
    for _ in range(times):
        process = subprocess.Popen(
            daemon_command(config, once=False),
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(chance.uniform(0.5, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait(10)


def api_key() -> str:
    return DEMO_KEY


def run_once(config: Path, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """`run --once` in a child process (umask -1: the test's own), its log lines captured."""
    return subprocess.run(
        [sys.executable, "-m", "watcher.cli", "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, KEY_ENV: api_key()},
        umask=umask,
    )


def live_context(store: Store, pipelines: list[Pipeline], owner: str = "me") -> Live:
    """What a loop is built from, for testing one loop without a daemon around it."""
    settings = Settings(pipelines=[p.config for p in pipelines])
    wakes = Wakes.for_workers(1, 1, store.doubt_raised)
    by_name = {p.name: p for p in pipelines}
    return Live(Context(settings, store, by_name, owner, Metrics(), wakes))


def crash_then_finish(config: Path, crash_at: str) -> bytes:
    """`run --once` killed -9 at `crash_at`, then `run --once` again to the end; returns the
    second run's log."""
    crashed = subprocess.run(
        daemon_command(config, once=True),
        env=environment(crash_at),
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == 137, crashed.stderr
    finished = subprocess.run(
        daemon_command(config, once=True), env=environment(), capture_output=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stderr


class Collector:
    """Stands in for the job table: what was queued, and what it knows of which path."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, str, int]] = []
        self.versions: dict[str, KnownFile] = {}
        self.asked: list[list[str]] = []  # the lookups made, a batch of paths each

    def __call__(self, found: list[Discovered]) -> None:
        self.queued += [(f.relative_path, f.sha256, f.size) for f in found]
        self.versions.update(
            {f.relative_path: KnownFile(f.sha256, f.size, f.mtime_ns) for f in found}
        )

    def known(self, paths: Sequence[str]) -> dict[str, KnownFile]:
        self.asked.append(list(paths))
        return {path: self.versions[path] for path in paths if path in self.versions}


def make_watcher(
    root: Path,
    collector: Collector,
    recursive: bool = True,
    settle_seconds: float = 0.0,
    wake: threading.Event | None = None,
    close_wait_seconds: float = 600.0,
) -> FolderWatcher:
    """A folder watcher of the default file types that queues into `collector`."""
    return FolderWatcher(
        "p",
        root,
        recursive=recursive,
        file_filter=FileFilter(include=tuple(DEFAULT_INCLUDE)),
        settle_seconds=settle_seconds,
        known=collector.known,
        enqueue=collector,
        wake=wake or threading.Event(),
        close_wait_seconds=close_wait_seconds,
    )


def streamed(path: Path, limit: int = 1 << 40) -> DocumentStream:
    """The file at `path`, open for its upload as the document of a job that hashed it as
    it is now."""
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    hashed = job(relative_path=path.name, sha256=digest, size=len(content), execution_id=None)
    document = open_document(hashed, path, limit)
    assert isinstance(document, DocumentStream)
    return document
