"""The operator's commands against a live daemon's database: find a failure, fix it, retry."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    KEY_ENV,
    api_key,
    deployment_url,
    results_under,
    running_daemon,
    wait_for,
    write_config,
)

from watcher.commands import parse_since
from watcher.emulator import DEMO_API, DEMO_ORG, EmulatorServer, UnstractEmulator, demo_emulator


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, api_key())


@pytest.fixture
def emulator() -> UnstractEmulator:
    return demo_emulator(execution_seconds=0.1)


@pytest.fixture
def server(emulator: UnstractEmulator) -> Iterator[EmulatorServer]:
    with EmulatorServer(emulator, host="127.0.0.1", port=0) as started:
        yield started


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "watcher.cli", *args, "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={**os.environ, KEY_ENV: api_key()})  # fmt: skip


def test_find_a_failed_document_fix_it_and_retry_it_while_the_daemon_runs(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.deployment(DEMO_ORG, DEMO_API).fail_glob = "bad*"
    config = write_config(tmp_path, deployment_url(server), db_url)
    drop = tmp_path / "drop"
    for name in ("good-1.txt", "good-2.txt", "bad.txt"):
        (drop / name).write_bytes(name.encode())
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 3, what="three documents")
        status = cli(config, "status")
        assert status.returncode == 0, status.stderr
        assert "docs" in status.stdout and "running" in status.stdout
        summary = json.loads(cli(config, "status", "--json").stdout)[0]
        assert summary["counts"] == {"done": 2, "failed": 1} and summary["paused_reason"] == ""

        listed = json.loads(cli(config, "jobs", "list", "--state", "failed", "--json").stdout)
        assert [job["path"] for job in listed] == ["bad.txt"]
        assert "emulated extraction failure" in listed[0]["error"]
        shown = cli(config, "jobs", "show", str(listed[0]["id"]))
        assert "bad.txt" in shown.stdout and "failed" in shown.stdout
        assert "jobs list" not in cli(config, "jobs", "list").stdout  # a table, not an error
        assert cli(config, "jobs", "show", "9999").returncode == 1

        emulator.deployment(DEMO_ORG, DEMO_API).fail_glob = None  # the operator fixes the cause
        retried = cli(config, "retry", str(listed[0]["id"]))
        assert retried.returncode == 0 and "1 job(s) queued again" in retried.stdout
        wait_for(lambda: (drop / "bad.txt.json").exists(), what="the retried document's result")
    assert not (drop / "bad.txt.error.json").exists()  # the success replaced the error file
    assert results_under(drop)["bad.txt.json"]["status"] == "success"

    report = cli(config, "report", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert sorted(r["path"] for r in rows) == ["bad.txt", "good-1.txt", "good-2.txt"]
    assert all(r["state"] == "done" and r["execution_id"] for r in rows)
    assert json.loads(cli(config, "report", "--format", "json", "--since", "1h").stdout)


def test_a_paused_pipeline_shows_why(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, sqlite_url: str
) -> None:
    emulator.set_faults(unauthorized=True)
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    (tmp_path / "drop" / "a.txt").write_bytes(b"waits")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.pipelines["docs"].is_paused(), what="the pause")
        shown = cli(config, "status")
    assert "PAUSED" in shown.stdout and "Unauthorized" in shown.stdout


def test_retry_needs_an_id_or_a_pipeline(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    done = cli(config, "retry")
    assert done.returncode == 2 and "give a job id" in done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", 1000.0 - 1800), ("2h", 1000.0 - 7200), ("2026-11-01", 1793491200.0), (None, None)],
)
def test_since(text: str | None, expected: float | None) -> None:
    assert parse_since(text, now=1000.0) == expected


def test_a_second_daemon_on_the_same_sqlite_file_is_refused(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    with running_daemon(config):
        second = cli(config, "run", "--once")
        status = cli(config, "status")
    assert second.returncode == 69 and "another unstract-watcher daemon" in second.stderr
    assert status.returncode == 0  # operator commands work beside the daemon
