"""The operator's commands against a live daemon's database: find a failure, fix it, retry."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import PG_URL
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
from watcher.emulator import DEMO_API, DEMO_ORG, EmulatorServer, UnstractEmulator
from watcher.jobs import JobState
from watcher.metrics import Metrics, serve_metrics
from watcher.store import Store, jobs
from watcher.store.operator import record_pause

ALL_STATES = [state.value for state in JobState]
NO_API = f"http://127.0.0.1:9/deployment/api/{DEMO_ORG}/{DEMO_API}/"  # never called


pytestmark = pytest.mark.usefixtures("api_keys")


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "watcher.cli", *args, "--config", str(config)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, KEY_ENV: api_key()}
    )


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
        assert list(summary["counts"]) == ALL_STATES
        assert {state: n for state, n in summary["counts"].items() if n} == {"done": 2, "failed": 1}
        assert summary["paused_reason"] == "" and summary["in_config"]

        listed = json.loads(cli(config, "jobs", "list", "--state", "failed", "--json").stdout)
        assert [job["path"] for job in listed] == ["bad.txt"]
        assert "emulated extraction failure" in listed[0]["error"]
        shown = cli(config, "jobs", "show", str(listed[0]["id"]))
        assert "bad.txt" in shown.stdout and "failed" in shown.stdout
        assert "finished_at: 20" in shown.stdout
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
    assert all(r["created_at"] <= r["finished_at"] <= r["updated_at"] for r in rows)
    records = json.loads(cli(config, "report", "--format", "json", "--since", "1h").stdout)
    assert all(record["finished_at"] for record in records)


def test_a_paused_pipeline_shows_why(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(unauthorized=True)
    config = write_config(tmp_path, deployment_url(server), db_url)
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


@pytest.mark.parametrize(
    "command", [["status"], ["jobs", "list"], ["jobs", "show", "1"], ["retry", "1"], ["report"]]
)
def test_operator_commands_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "not-yet"  # e.g. the service never started, or the wrong config
    config = write_config(tmp_path, NO_API, f"sqlite:///{folder / 'state.db'}")
    answer = cli(config, *command)
    assert answer.returncode == 69, answer.stderr
    assert f"database.url = sqlite:///{folder / 'state.db'}" in answer.stderr
    assert "unstract-watcher db upgrade" in answer.stderr and "start the daemon" in answer.stderr
    assert not folder.exists()


def test_operator_commands_never_migrate_a_database(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, NO_API, db_url)
    empty = Store(db_url)
    empty.now()  # the SQLite file (or the PostgreSQL schema) exists, without tables
    missing = cli(config, "status")
    assert missing.returncode == 69 and "no job table" in missing.stderr
    assert "db upgrade" in missing.stderr
    assert cli(config, "db", "upgrade").returncode == 0
    assert cli(config, "status").returncode == 0
    with empty.engine.begin() as conn:  # as if an older version had set it up
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
    behind = cli(config, "jobs", "list")
    assert behind.returncode == 69 and "revision 0002" in behind.stderr
    assert "db upgrade" in behind.stderr
    with empty.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    empty.close()


def put_jobs(db_url: str, states: dict[str, tuple[str, JobState]]) -> Store:
    """A migrated database with one job per path, in the given (pipeline, state)."""
    store = Store(db_url)
    store.upgrade()
    for path, (pipeline, state) in states.items():
        job_id = store.enqueue(pipeline, path, path.ljust(64, "0"), 1, 1)
        with store.engine.begin() as conn:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(state=state.value))
    return store


def test_status_shows_every_state_and_marks_removed_pipelines(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, NO_API, db_url)
    states = {
        "q": JobState.QUEUED,
        "s": JobState.SUBMITTED,
        "r": JobState.RESULT_STORED,
        "k": JobState.SKIPPED,
        "h": JobState.HELD,
    }
    store = put_jobs(
        db_url,
        {p: ("docs", state) for p, state in states.items()} | {"old": ("gone", JobState.FAILED)},
    )
    record_pause(store, "gone", "401 Unauthorized")  # left behind when it was removed
    store.close()

    shown = cli(config, "status").stdout.splitlines()
    assert shown[0].split()[:10] == [
        "pipeline",
        "queued",
        "in",
        "flight",
        "result_stored",
        "done",
        "failed",
        "skipped",
        "held",
        "oldest",
    ]
    assert shown[1].split()[:8] == ["docs", "1", "1", "1", "0", "0", "1", "1"]
    assert shown[0].endswith("paused") and shown[1].endswith(" no")  # not paused; no daemon runs
    assert shown[2].split()[:8] == ["gone", "0", "0", "0", "0", "1", "0", "0"]
    assert shown[2].endswith("not in the config any more") and "PAUSED" not in shown[2]

    docs, gone = json.loads(cli(config, "status", "--json").stdout)
    assert docs["counts"] == {state: int(state in states.values()) for state in ALL_STATES}
    assert docs["in_flight"] == 1 and docs["in_config"]
    assert gone["name"] == "gone" and not gone["in_config"] and gone["paused_reason"] == ""


def test_jobs_list_refuses_an_unknown_state(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, NO_API, sqlite_url)
    answer = cli(config, "jobs", "list", "--state", "bogus")
    assert answer.returncode == 2 and "invalid choice: 'bogus'" in answer.stderr


def test_retry_says_why_not(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, NO_API, db_url)
    put_jobs(
        db_url,
        {
            "a.txt": ("docs", JobState.DONE),
            "b.txt": ("docs", JobState.SUBMITTED),
            "c.txt": ("gone", JobState.FAILED),
        },
    ).close()
    refusals = {
        ("retry", "1"): "job 1 is done; only failed, skipped or held jobs can be retried",
        ("retry", "2"): "job 2 is submitted; only failed, skipped or held jobs can be retried",
        ("retry", "3"): "job 3 belongs to pipeline gone, which is not in the config",
        ("retry", "42"): "no job 42",
        ("retry", "--pipeline", "gone"): "pipeline gone is not in the config",
    }
    for command, why in refusals.items():
        answer = cli(config, *command)
        assert (answer.returncode, answer.stderr.strip()) == (1, f"unstract-watcher: {why}")
        assert "queued again" not in answer.stdout
    nothing = cli(config, "retry", "--pipeline", "docs")
    assert (nothing.returncode, nothing.stdout) == (1, "pipeline docs has no failed jobs\n")


def test_retry_brings_a_failed_source_back_from_the_archive(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.deployment(DEMO_ORG, DEMO_API).fail_glob = "bad*"
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        {"after_success": "move", "archive_dir": str(archive)},
    )
    drop = tmp_path / "drop"
    (drop / "sub").mkdir()
    (drop / "sub" / "bad.txt").write_bytes(b"a document the API refuses at first")
    failed_copy = archive / "failed" / "sub" / "bad.txt"
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 1, what="the failure")
        assert failed_copy.exists() and not (drop / "sub" / "bad.txt").exists()

        failed_copy.rename(tmp_path / "elsewhere.txt")  # lost: a retry could only skip it
        refused = cli(config, "retry", "1")
        assert refused.returncode == 1
        assert f"{drop / 'sub' / 'bad.txt'} is gone and not in {archive}/failed/" in refused.stderr
        assert json.loads(cli(config, "jobs", "show", "1", "--json").stdout)["state"] == "failed"

        (tmp_path / "elsewhere.txt").rename(failed_copy)
        emulator.deployment(DEMO_ORG, DEMO_API).fail_glob = None  # the operator fixes the cause
        retried = cli(config, "retry", "--pipeline", "docs")
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.splitlines() == [
            f"job 1: moved {failed_copy} back to {drop / 'sub' / 'bad.txt'}",
            "1 job(s) queued again",
        ]
        processed = archive / "processed" / "sub" / "bad.txt"
        wait_for(processed.exists, what="the retried source in processed/")
        wait_for(lambda: daemon.progress().finished == 2, what="the retried document")
    assert results_under(drop) == {"sub/bad.txt.json": results_under(drop)["sub/bad.txt.json"]}
    assert results_under(drop)["sub/bad.txt.json"]["status"] == "success"
    assert not failed_copy.exists()
    assert json.loads(cli(config, "jobs", "show", "1", "--json").stdout)["state"] == "done"


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_metrics_answer_while_the_database_is_down(tmp_path: Path, database: str) -> None:
    path = tmp_path / "state.db"
    store = Store(
        f"sqlite:///{path}"
        if database == "sqlite"
        else PG_URL.replace("127.0.0.1:5432", "127.0.0.1:1")
    )
    if database == "sqlite":
        store.upgrade()
        store.engine.dispose()
        path.write_bytes(b"not a database" * 512)  # a disk that lost the file's contents
    metrics = Metrics(store)
    metrics.uploads.labels("docs", "accepted").inc()
    server = serve_metrics(metrics, "127.0.0.1", 0, lambda: [])
    try:
        for _ in range(2):  # and again, once it is known to be down
            answer = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
            assert answer.status_code == 200
            assert "unstract_watcher_database_up 0.0" in answer.text
            assert 'unstract_watcher_uploads_total{outcome="accepted",pipeline="docs"} 1.0' in (
                answer.text
            )
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def test_metrics_say_the_database_is_up(tmp_path: Path, db_url: str) -> None:
    store = put_jobs(db_url, {"a.txt": ("docs", JobState.RESULT_STORED)})
    server = serve_metrics(Metrics(store), "127.0.0.1", 0, lambda: [])
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
        store.close()
    assert "unstract_watcher_database_up 1.0" in text
    assert 'unstract_watcher_documents{pipeline="docs",state="result_stored"} 1.0' in text
