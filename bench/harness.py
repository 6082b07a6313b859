"""Black-box plumbing: the emulator and the daemon as separate processes, their configs, real
files in a drop folder, and what /proc says about the daemon process.

Nothing here imports the daemon's code: the benchmark sees it only through files, HTTP and
/proc, as an operator would. (The emulator's demo key is the one thing taken from the package.)
"""

from __future__ import annotations

import compileall
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import watcher
from watcher.emulator import DEMO_API, DEMO_KEY, DEMO_ORG

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
KEY_ENV = "BENCH_UNSTRACT_API_KEY"
DOC_BYTES = 4096
RESULT_SUFFIXES = (".json",)  # a.pdf.json and a.pdf.error.json
ERROR_SUFFIX = ".error.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A scenario could not finish (a process died, results stopped coming)."""


# -- processes ------------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for our children: the demo key, and no stray config overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSTRACT_WATCHER_")}
    env[KEY_ENV] = DEMO_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def compile_daemon() -> None:
    """Byte-compile the daemon's own modules, as installing its wheel does: from an editable
    checkout with PYTHONDONTWRITEBYTECODE set (or a read-only one), every daemon would
    compile them from source again (about 50 ms and 1.4 MiB of the start-up figures)."""
    compileall.compile_dir(Path(watcher.__file__).parent, quiet=1)


class Processes:
    """Every child we start, so that all of them are stopped on exit or Ctrl-C."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches only us; we stop them.
            proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env or child_env(),
                cwd=log_path.parent,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code (negative: signal)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self._procs:
            self._procs.remove(proc)
        return int(proc.returncode)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc, timeout=5.0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    alive: subprocess.Popen[bytes] | None = None,
    step: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and alive.poll() is not None:
            raise BenchError(f"process {alive.pid} exited ({alive.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


# -- the emulator ---------------------------------------------------------------------------


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    base_url: str

    @property
    def deployment_url(self) -> str:
        return f"{self.base_url}/deployment/api/{DEMO_ORG}/{DEMO_API}/"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/_emulator/stats", timeout=60) as answer:
            return dict(json.load(answer))

    def answers(self) -> bool:
        try:
            self.stats()
        except OSError:
            return False
        return True


def start_emulator(
    procs: Processes, log_path: Path, execution_seconds: float, org_limit: int
) -> Emulator:
    port = free_port()
    args = [
        PYTHON,
        "-m",
        "watcher.cli",
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--execution-seconds",
        str(execution_seconds),
        "--org-limit",
        str(org_limit),
    ]
    emulator = Emulator(procs.spawn(args, log_path), f"http://127.0.0.1:{port}")
    wait_until(emulator.answers, 20.0, "the emulator to answer", alive=emulator.proc)
    return emulator


# -- the daemon -----------------------------------------------------------------------------


Override = tuple[str, str, Any]  # (table: daemon | database | pipeline | api, key, value)


@dataclass(frozen=True)
class Layout:
    """One daemon's world: its folders, database and config, under one scenario folder."""

    home: Path
    url: str
    settle_seconds: float
    max_in_flight: int = 20
    log_level: str = "warning"
    overrides: tuple[Override, ...] = ()  # --set: config keys changed for a what-if run

    @property
    def watch_dir(self) -> Path:
        return self.home / "drop"

    @property
    def output_dir(self) -> Path:
        return self.home / "results"

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    def with_url(self, url: str, log_level: str | None = None) -> Layout:
        return replace(self, url=url, log_level=log_level or self.log_level)

    def tables(self) -> dict[str, dict[str, Any]]:
        """The config's keys (documented in config.example.toml); the rest keep defaults."""
        tables: dict[str, dict[str, Any]] = {
            "database": {"url": f"sqlite:///{self.db_path}"},
            "daemon": {"log_level": self.log_level, "log_format": "json"},
            "pipeline": {
                "name": "bench",
                "watch_dir": str(self.watch_dir),
                "output_dir": str(self.output_dir),
                "settle_seconds": self.settle_seconds,
            },
            "api": {
                "url": self.url,
                "api_key_env": KEY_ENV,
                "tags": ["bench"],
                "max_in_flight": self.max_in_flight,
            },
        }
        for table, key, value in self.overrides:
            tables[table][key] = value
        return tables

    def write_config(self) -> Path:
        self.watch_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tables = self.tables()
        lines = [
            "[database]",
            *_toml_pairs(tables["database"]),
            "[daemon]",
            *_toml_pairs(tables["daemon"]),
            "[[pipelines]]",
            *_toml_pairs(tables["pipeline"]),
            "[pipelines.api]",
            *_toml_pairs(tables["api"]),
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path


def _toml_pairs(table: dict[str, Any]) -> list[str]:
    """key = value lines; JSON spells strings, numbers, booleans and lists as TOML does."""
    return [f"{key} = {json.dumps(value)}" for key, value in table.items()]


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float  # epoch seconds just before the process was created

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status_kib(self, field: str) -> int:
        """A `VmRSS:`-style line of /proc/PID/status, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise BenchError(f"/proc/{self.pid}/status has no {field}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def io_bytes(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise BenchError(f"/proc/{self.pid}/io has no {field}")

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines; anything else (a traceback) as {"raw": line}."""
        events: list[dict[str, Any]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            events.append(event if isinstance(event, dict) else {"raw": line})
        return events

    def event_time(self, name: str) -> float | None:
        """Epoch time of the first log line with this event, from its own timestamp."""
        for event in self.log_events():
            if event.get("event") == name and "timestamp" in event:
                return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        return None


def start_daemon(
    procs: Processes,
    layout: Layout,
    log_name: str = "daemon.log",
    once: bool = False,
    env: dict[str, str] | None = None,
) -> Daemon:
    config = layout.write_config()
    log_path = layout.home / log_name
    args = [PYTHON, "-m", "watcher.cli", "run", "--config", str(config)]
    if once:
        args.append("--once")
    started_at = time.time()
    return Daemon(procs.spawn(args, log_path, child_env(env)), log_path, started_at)


class NotifyListener:
    """A $NOTIFY_SOCKET of our own, as systemd gives a Type=notify service: records when the
    daemon first says READY=1 (sd_notify)."""

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="uwb-notify-"))  # short: sun_path limit
        self.path = self._folder / "notify.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self.ready_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.ready_at is None and b"READY=1" in data.split(b"\n"):
                self.ready_at = time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def log_problems(daemon: Daemon, limit: int = 3) -> list[str]:
    """Warning and error lines (and anything that is not JSON) the daemon logged."""
    bad = [
        e
        for e in daemon.log_events()
        if "raw" in e or e.get("level") in ("warning", "error", "critical")
    ]
    shown = [e.get("event") or e.get("raw", "") for e in bad[:limit]]
    return [f"{len(bad)} warning/error lines, first: {shown}"] if bad else []


# -- documents and results ------------------------------------------------------------------


def make_documents(count: int, size: int = DOC_BYTES) -> list[bytes]:
    """Distinct documents of `size` bytes (PDF-looking text, so every sha256 differs)."""
    header = b"%PDF-1.4\n% unstract-watcher benchmark\n"
    return [(header + os.urandom(size).hex().encode())[:size] for _ in range(count)]


def doc_names(count: int, prefix: str = "doc") -> list[str]:
    return [f"{prefix}-{index:06d}.pdf" for index in range(count)]


def drop(folder: Path, names: Sequence[str], contents: Sequence[bytes]) -> float:
    """Write the documents into `folder`; return the epoch time just before the first write."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for name, content in zip(names, contents, strict=True):
        (folder / name).write_bytes(content)
    return started


def result_files(folder: Path) -> list[Path]:
    """Finished result and error files in one folder (not our temp files)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    return [
        Path(e.path)
        for e in entries
        if e.name.endswith(RESULT_SUFFIXES) and not e.name.startswith(".")
    ]


def count_results(folder: Path) -> int:
    return len(result_files(folder))


def wait_for_results(
    folder: Path, count: int, daemon: Daemon, stall_seconds: float, step: float = 0.05
) -> list[Path]:
    """Wait until `folder` holds `count` result files; fail if none came for stall_seconds."""
    seen, last_progress = -1, time.monotonic()
    while True:
        done = count_results(folder)
        if done >= count:
            return result_files(folder)
        if done != seen:
            seen, last_progress = done, time.monotonic()
        if daemon.proc.poll() is not None:
            raise BenchError(f"the daemon exited ({daemon.proc.returncode}) with {done}/{count}")
        if time.monotonic() - last_progress > stall_seconds:
            raise BenchError(f"no new result for {stall_seconds:.0f} s ({done}/{count} done)")
        time.sleep(step)


def mtime(path: Path) -> float:
    return path.stat().st_mtime_ns / 1e9


def error_files(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.name.endswith(ERROR_SUFFIX)]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 20 values is the 19th smallest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
