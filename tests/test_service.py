"""Running as a service, without systemd itself: the unit file, notifications over a real
NOTIFY_SOCKET datagram socket, the watchdog, SIGHUP reloads and SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import (
    api_key,
    deployment_url,
    results_under,
    running_daemon,
    wait_for,
    write_config,
)
from structlog.testing import capture_logs

from watcher import config as config_module
from watcher.emulator import EmulatorServer, demo_emulator
from watcher.jobs import JobState
from watcher.supervisor import Loop

UNIT = Path(__file__).parent.parent / "deploy" / "systemd" / "unstract-watcher.service"


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd)"
    unit = tmp_path / "unstract-watcher.service"
    executable = Path(sys.executable).parent / "unstract-watcher"
    unit.write_text(
        UNIT.read_text().replace(
            "/opt/unstract-watcher/.venv/bin/unstract-watcher", str(executable)
        )
    )
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = UNIT.read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "LoadCredential=",
        "StateDirectory=",
        "ConfigurationDirectory=",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "User=",
    ):
        assert directive in text


class Notifications:
    """The systemd side of sd_notify: a datagram socket that collects what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.seen.extend(self.sock.recv(4096).decode().splitlines())
            except TimeoutError:
                return self.seen

    def wait_for(self, prefix: str, after: int = 0, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.collect()[after:] if line.startswith(prefix)]
            if found:
                return found[0]
        raise AssertionError(f"no {prefix} from the daemon; saw {self.seen[-10:]}")


def test_notifications_watchdog_reload_and_stop(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    key_file = tmp_path / "unstract.key"
    key_file.write_text("00000000-0000-4000-8000-000000000000")  # wrong: the pipeline pauses
    key_file.chmod(0o600)
    config = write_config(
        tmp_path,
        deployment_url(server),
        sqlite_url,
        api={"api_key_env": "", "api_key_file": str(key_file)},
    )
    (tmp_path / "drop" / "a.txt").write_bytes(b"waits for a good key")
    notes = Notifications(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notes.path), "WATCHDOG_USEC": "1000000"}
    process = subprocess.Popen(
        [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notes.wait_for("READY=1")
        notes.wait_for("WATCHDOG=1")  # pinged while every loop goes round
        assert notes.wait_for("STATUS=").startswith("STATUS=")
        wait_for(lambda: "paused" in " ".join(notes.collect()), timeout=30, what="paused status")

        mark = len(notes.collect())
        config.write_text(config.read_text().replace("settle_seconds", "settle_secs"))
        process.send_signal(signal.SIGHUP)  # a broken config is refused, the old one stays
        notes.wait_for("RELOADING=1", after=mark)
        notes.wait_for("READY=1", after=mark)
        config.write_text(config.read_text().replace("settle_secs", "settle_seconds"))

        key_file.write_text(api_key())  # the operator fixes the key, then reloads
        mark = len(notes.collect())
        process.send_signal(signal.SIGHUP)
        notes.wait_for("READY=1", after=mark)
        wait_for(lambda: "a.txt.json" in results_under(tmp_path / "drop"), what="the document")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    notes.wait_for("STOPPING=1")
    notes.sock.close()
    assert "reload refused" in stderr and "settle_secs" in stderr
    assert "config reloaded" in stderr
    assert api_key() not in stderr


@pytest.mark.usefixtures("api_keys")
def test_without_a_watchdog_signals_still_reach_the_sleeping_main_loop(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    notes = Notifications(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_USEC"}
    process = subprocess.Popen(
        [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)],
        env={**env, "NOTIFY_SOCKET": str(notes.path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notes.wait_for("READY=1")
        mark = len(notes.collect())
        process.send_signal(signal.SIGHUP)  # the main loop sleeps until its next status line
        notes.wait_for("RELOADING=1", after=mark)
        notes.wait_for("READY=1", after=mark)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-3000:]
    notes.wait_for("STOPPING=1")
    notes.sock.close()
    assert "config reloaded" in stderr


@pytest.mark.usefixtures("api_keys")
def test_a_reload_adds_and_removes_pipelines_without_losing_jobs(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    second = tmp_path / "second"
    second.mkdir()
    (second / "b.txt").write_bytes(b"second pipeline")
    with running_daemon(config) as daemon:
        (tmp_path / "drop" / "a.txt").write_bytes(b"first pipeline")
        wait_for(lambda: daemon.progress().finished == 1, what="the first pipeline's document")
        text = config.read_text()
        extra = text[text.index("[[pipelines]]") :].replace('name = "docs"', 'name = "second"')
        config.write_text(text + "\n" + extra.replace(str(tmp_path / "drop"), str(second)))
        assert daemon.reload(lambda: config_module.load(config))
        wait_for(lambda: daemon.progress().finished == 2, what="the added pipeline's document")
        assert sorted(daemon.pipelines) == ["docs", "second"]
    assert "b.txt.json" in results_under(second)


@pytest.mark.usefixtures("api_keys")
def test_metrics_and_health_over_http(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(
        tmp_path, deployment_url(server), sqlite_url, api={"include_metadata": True}
    )
    config.write_text(config.read_text() + "\n[metrics]\nenabled = true\nport = 0\n")
    for index in range(3):
        (tmp_path / "drop" / f"{index}.txt").write_bytes(b"document %d" % index)
    (tmp_path / "drop" / "bad.txt").write_bytes(b"EMULATOR-FAIL")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 4, what="four documents")
        base = f"http://127.0.0.1:{daemon.metrics_server.server_port}"
        scraped = httpx.get(f"{base}/metrics").text
        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 200 and health.json() == {"ok": True, "problems": []}
        daemon.discovery.last_beat = 0.0  # as if discovery had hung for a long time
        sick = httpx.get(f"{base}/healthz")
    lines = set(scraped.splitlines())
    assert 'unstract_watcher_documents{pipeline="docs",state="done"} 3.0' in lines
    assert 'unstract_watcher_documents{pipeline="docs",state="failed"} 1.0' in lines
    assert 'unstract_watcher_uploads_total{outcome="accepted",pipeline="docs"} 4.0' in lines
    assert 'unstract_watcher_results_total{outcome="success",pipeline="docs"} 3.0' in lines
    assert 'unstract_watcher_result_seconds_count{pipeline="docs"} 4.0' in lines
    assert 'unstract_watcher_in_flight{pipeline="docs"} 0.0' in lines
    cost = [line for line in lines if line.startswith("unstract_watcher_llm_cost_dollars_total")]
    assert cost and float(cost[0].split()[-1]) > 0
    assert sick.status_code == 503 and "stuck: discovery" in sick.json()["problems"]


@pytest.mark.usefixtures("api_keys")
def test_a_pipeline_removed_mid_flight_keeps_its_executions_for_when_it_returns(
    tmp_path: Path, db_url: str
) -> None:
    slow = demo_emulator(execution_seconds=1.5)
    with EmulatorServer(slow, host="127.0.0.1", port=0) as server:
        config = write_config(tmp_path, deployment_url(server), db_url)
        full = config.read_text()
        other = tmp_path / "other"
        other.mkdir()
        only_other = full.replace(f'"{tmp_path / "drop"}"', f'"{other}"').replace(
            'name = "docs"', 'name = "other"'
        )
        with running_daemon(config) as daemon:
            for index in range(3):
                (tmp_path / "drop" / f"{index}.txt").write_bytes(b"document %d" % index)

            def in_flight() -> list[object]:
                return [j for j in daemon.store.list_jobs() if j.state is JobState.SUBMITTED]

            wait_for(lambda: len(in_flight()) == 3, what="three executions in flight")
            config.write_text(only_other)
            assert daemon.reload(lambda: config_module.load(config))  # "docs" is gone
            time.sleep(2.5)  # the executions end on the server meanwhile
            assert len(in_flight()) == 3 and not results_under(tmp_path / "drop")
            config.write_text(full)
            assert daemon.reload(lambda: config_module.load(config))  # and it is back
            wait_for(lambda: len(results_under(tmp_path / "drop")) == 3, what="the results")
        assert slow.stats().posts == 3  # polled where they were, never submitted again


class _StuckLoop(Loop):
    """A loop whose last round was long ago: what a hung HTTP call or disk looks like."""

    name = "_StuckLoop"

    def __init__(self) -> None:
        self.last_beat = -1e9

    def run(self, stop: threading.Event) -> None:
        stop.wait()


def withheld(logs: list[dict[str, Any]]) -> int:
    return sum(1 for line in logs if line["event"].startswith("daemon loops are stuck"))


@pytest.mark.usefixtures("api_keys")
def test_the_watchdog_ping_stops_while_a_loop_is_stuck(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = Notifications(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notes.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1s: a ping every 0.5 s
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    with running_daemon(config) as daemon:
        notes.wait_for("READY=1")
        notes.wait_for("WATCHDOG=1")
        stuck = _StuckLoop()
        with capture_logs() as logs:
            daemon.supervisor.start([stuck])
            # Each round that would have pinged logs instead; a ping sent before the first of
            # them is already in the socket when we count.
            wait_for(lambda: withheld(logs) >= 1, what="a withheld ping")
            mark = len(notes.collect())
            wait_for(lambda: withheld(logs) >= 4, what="three more pings' worth")
            assert not [
                n for n in notes.collect()[mark:] if n == "WATCHDOG=1"
            ]  # systemd restarts us
            assert "stuck: _StuckLoop" in daemon.health_problems()
            stuck.beat()  # it moves on again: the pings come back
        notes.wait_for("WATCHDOG=1", after=len(notes.collect()))
    notes.wait_for("STOPPING=1")
    notes.sock.close()
