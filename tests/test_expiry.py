"""Stored answers: one copy each, dropped `keep_results_days` after the result file was
written, and the migration of a database from before; on a real SQLite file and PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from harness import (
    KEY_ENV,
    deployment_url,
    let_discovery_catch_up,
    results_under,
    running_daemon,
    wait_for,
    write_config,
)

from watcher.backends import stored_cost
from watcher.commands import cost_of, jobs_show
from watcher.emulator import DEMO_KEY, EmulatorServer
from watcher.heartbeat import Heartbeat
from watcher.jobs import Decision, Job, JobState
from watcher.output import Placement
from watcher.store import Store
from watcher.store.schema import answers, jobs, results

SHA = "a" * 64
DAY = 86400.0


def answer(name: str, cost: float = 0.25) -> dict[str, Any]:
    usage = {"usage": {"cost_in_dollars": cost}}
    item = {"file": name, "status": "Success", "result": {"total": 1}, "metadata": usage}
    return {"status": "COMPLETED", "message": [item]}


def finished(store: Store, name: str = "a.pdf", execution_id: str = "e-1") -> Job:
    """A document through every stage, its file written: done, its answer stored."""
    store.enqueue("p", name, SHA, 1, 1)
    job = store.claim_for_upload("me", {"p": 50})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id=execution_id), 200)
    polled = next(j for j in store.claim_due_polls("me", 50, ["p"]) if j.id == job.id)
    decision = Decision(JobState.RESULT_STORED, outcome="success")
    assert store.record_poll(polled, decision, 200, answer(name))
    stored = next(j for j in store.claim_stored_results("me", 50, ["p"]) if j.id == job.id)
    assert store.mark_finished(stored)
    return stored


def age(store: Store, days: float, only: int | None = None) -> None:
    """Move finishes and the answers stored before them (of every job, or of one) back in
    time instead of waiting."""
    finish = sa.update(jobs).values(finished_at=jobs.c.finished_at - days * DAY)
    stored = sa.update(answers).values(stored_at=answers.c.stored_at - days * DAY)
    with store.engine.begin() as conn:
        conn.execute(finish if only is None else finish.where(jobs.c.id == only))
        conn.execute(stored if only is None else stored.where(answers.c.job_id == only))


def kept_bodies(store: Store) -> list[Any]:
    with store.engine.begin() as conn:
        return list(conn.execute(sa.select(results.c.body)).scalars())


def test_an_answer_is_kept_once(store: Store) -> None:
    finished(store)
    assert store.list_jobs()[0].result_body == answer("a.pdf")
    assert kept_bodies(store) == [None]  # the job row holds it
    assert store.stored_result("e-1") == ("success", "", answer("a.pdf"))


def test_a_copy_kept_for_the_new_owner_is_cleared_once_its_row_holds_it(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-1"), 200)
    dead = store.claim_due_polls("dead", 10, ["p"])[0]
    with store.engine.begin() as conn:  # its lease runs out
        conn.execute(sa.update(jobs).values(next_poll_at=jobs.c.next_poll_at - 10_000))
    alive = store.claim_due_polls("alive", 10, ["p"])[0]
    decision = Decision(JobState.RESULT_STORED, outcome="success")
    assert not store.record_poll(dead, decision, 200, answer("a.pdf"))
    assert kept_bodies(store) == [json.dumps(answer("a.pdf"))]  # the only copy
    _, _, body = store.stored_result("e-1") or ("", "", None)
    assert store.record_poll(alive, decision, 406, body)  # the new owner uses the copy
    assert kept_bodies(store) == [None]
    assert store.list_jobs()[0].result_body == answer("a.pdf")


def test_answers_past_keep_results_days_are_dropped_and_their_cost_kept(store: Store) -> None:
    old, recent = finished(store, "old.pdf", "e-old"), finished(store, "new.pdf", "e-new")
    age(store, 8, only=old.id)
    age(store, 1, only=recent.id)
    assert store.drop_expired_answers(7 * DAY, stored_cost) == 1
    assert store.drop_expired_answers(7 * DAY, stored_cost) == 0
    by_id = {job.id: job for job in store.list_jobs()}
    dropped = by_id[old.id]
    assert dropped.result_body is None and dropped.answer_dropped_at is not None
    assert dropped.state is JobState.DONE and dropped.sha256 == SHA and dropped.execution_id
    assert cost_of(dropped) == 0.25 == cost_of(by_id[recent.id])
    assert by_id[recent.id].result_body == answer("new.pdf")
    assert store.stored_result("e-old") is None  # says plainly that it expired
    assert store.stored_result("e-new") is not None
    assert store.enqueue("p", "old.pdf", SHA, 1, 1) is None  # dedup still knows it


def test_zero_days_drops_an_answer_once_its_file_is_written_only(store: Store) -> None:
    finished(store)
    store.enqueue("p", "b.pdf", SHA, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-2"), 200)
    polled = store.claim_due_polls("me", 10, ["p"])[0]
    store.record_poll(polled, Decision(JobState.RESULT_STORED, outcome="success"), 200, {"x": 1})
    assert store.drop_expired_answers(0.0, stored_cost) == 1
    waiting = store.claim_stored_results("me", 10, ["p"])  # its file is not written yet
    assert [j.result_body for j in waiting] == [{"x": 1}]


def test_batches_take_the_oldest_first(store: Store) -> None:
    for index in range(5):
        finished(store, f"{index}.pdf", f"e-{index}")
    age(store, 1)
    assert store.drop_expired_answers(0.0, stored_cost, limit=2) == 2
    assert store.drop_expired_answers(0.0, stored_cost, limit=2) == 2
    assert store.drop_expired_answers(0.0, stored_cost, limit=2) == 1
    assert all(job.result_body is None for job in store.list_jobs())


def test_jobs_show_says_when_the_answer_was_dropped_and_where_the_file_is(
    store: Store, tmp_path: Path
) -> None:
    job = finished(store)
    placement = Placement(tmp_path / "drop", tmp_path / "out", "keep", None)
    shown = jobs_show(store, job.id, False, {"p": placement})
    assert shown is not None and "kept in the database" in shown
    assert f"result_file: {tmp_path / 'out' / 'a.pdf.json'}" in shown
    store.drop_expired_answers(0.0, stored_cost)
    shown = jobs_show(store, job.id, False, {"p": placement})
    assert shown is not None and "stored_answer: dropped 20" in shown
    record = json.loads(jobs_show(store, job.id, True, {"p": placement}) or "{}")
    assert record["result_body"] is None and record["answer_dropped_at"].startswith("20")
    assert record["result_file"] == str(tmp_path / "out" / "a.pdf.json")
    assert record["cost_in_dollars"] == 0.25


def test_a_retried_job_forgets_that_its_old_answer_was_dropped(store: Store) -> None:
    from watcher.store.operator import retry_jobs

    store.enqueue("p", "a.pdf", SHA, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-1"), 200)
    polled = store.claim_due_polls("me", 10, ["p"])[0]
    store.record_poll(polled, Decision(JobState.RESULT_STORED, outcome="failed"), 200, {"x": 1})
    store.mark_finished(store.claim_stored_results("me", 10, ["p"])[0])
    assert store.drop_expired_answers(0.0, stored_cost) == 1
    assert retry_jobs(store, [job.id]) == 1
    again = store.list_jobs()[0]
    assert again.answer_dropped_at is None and again.state is JobState.QUEUED


def test_a_retried_job_loses_its_kept_answer(store: Store) -> None:
    from watcher.store.operator import retry_jobs

    job = finished(store)
    with store.engine.begin() as conn:  # failed with its answer kept: retryable
        conn.execute(sa.update(jobs).values(state=JobState.FAILED.value))
        assert answer_rows(conn) == 1
    assert retry_jobs(store, [job.id]) == 1
    with store.engine.begin() as conn:
        assert answer_rows(conn) == 0
    assert store.list_jobs()[0].result_body is None


def answer_rows(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(answers)).scalar_one())


def checkpointed_size(path: Path) -> int:
    """The database file's size once the WAL's pages are in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.stat().st_size


def test_sqlite_gives_the_space_back(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    with store.engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental
    big = {"message": [{"file": "a.pdf", "result": {"text": "x" * 200_000}}]}
    finished(store)
    with store.engine.begin() as conn:
        conn.execute(sa.update(answers).values(body=json.dumps(big)))
    path = Path(store.db.sqlite_file())
    before = checkpointed_size(path)
    assert store.drop_expired_answers(0.0, stored_cost) == 1
    with store.engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
        assert answer_rows(conn) == 0
    assert checkpointed_size(path) < before - 150_000
    store.close()


def old_sqlite_file(sqlite_url: str) -> None:
    """A file made before auto-vacuum was switched on: its mode is set when it is created."""
    conn = sqlite3.connect(sa.engine.make_url(sqlite_url).database or "", isolation_level=None)
    conn.execute("CREATE TABLE made_before (x)")
    conn.execute("DROP TABLE made_before")
    conn.close()


OLD_JOB = (
    "INSERT INTO jobs (id, pipeline, relative_path, sha256, size, mtime_ns, state, attempts, "
    "next_attempt_at, execution_id, poll_count, outcome, result_body, last_error, created_at, "
    "updated_at, finished_at) VALUES (:id, 'p', :path, :sha, 1, 1, :state, 1, 0, :eid, 1, "
    "'success', :body, '', 0, 0, :finished)"
)
OLD_RESULT = (
    "INSERT INTO results (execution_id, job_id, outcome, error, body, created_at) "
    "VALUES (:eid, :id, 'success', '', :body, 0)"
)


def test_a_database_at_the_previous_head_is_migrated(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        old_sqlite_file(db_url)
    store = Store(db_url)
    store.upgrade("0006")
    done = {
        "id": 1,
        "path": "a.pdf",
        "sha": SHA,
        "state": "done",
        "eid": "e-1",
        "body": json.dumps(answer("a.pdf")),
        "finished": 1000.0,
    }
    running = {
        **done,
        "id": 2,
        "path": "b.pdf",
        "state": "submitted",
        "eid": "e-2",
        "finished": None,
    }
    with store.engine.begin() as conn:
        if store.db.is_sqlite:
            assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 0
        conn.execute(sa.text(OLD_JOB), [done, {**running, "body": None}])
        conn.execute(sa.text(OLD_RESULT), [done, running])  # both copies, and a taken-over one
    store.upgrade()
    with store.engine.begin() as conn:
        if store.db.is_sqlite:
            assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
    by_id = {job.id: job for job in store.list_jobs()}
    assert by_id[1].result_body == answer("a.pdf") and by_id[1].answer_dropped_at is None
    assert sorted(kept_bodies(store), key=str) == [None, running["body"]]
    assert store.stored_result("e-1") == ("success", "", answer("a.pdf"))
    assert store.stored_result("e-2") == ("success", "", answer("a.pdf"))
    assert store.enqueue("p", "a.pdf", SHA, 1, 1) is None
    assert store.drop_expired_answers(7 * DAY, stored_cost) == 1
    assert cost_of(store.list_jobs()[0]) == 0.25
    store.upgrade()  # again: nothing to do
    store.close()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "watcher.cli", *args, "--config", str(config)]
    env = {**os.environ, KEY_ENV: DEMO_KEY}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.usefixtures("api_keys")
def test_with_zero_days_the_daemon_keeps_only_the_files_and_the_commands_say_so(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(
        tmp_path, deployment_url(server), db_url, database={"keep_results_days": 0}
    )
    drop = tmp_path / "drop"
    for name in ("a.txt", "b.txt"):
        (drop / name).write_bytes(name.encode())
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 2, what="two documents")
        heartbeat = Heartbeat(daemon.live)
        heartbeat.expire_answers(daemon.live.current)  # the pass its loop makes
        with daemon.live.current.store.engine.begin() as conn:
            assert answer_rows(conn) == 0
        (drop / "a.txt").write_bytes(b"a.txt")  # the same content again: not processed twice
        let_discovery_catch_up(daemon, drop)
        paths = [job.relative_path for job in daemon.live.current.store.list_jobs()]
        assert paths.count("a.txt") == 1
        # systemd's STATUS= line counts the work at hand, not the history.
        status = daemon.status_line()
        assert status == "0 queued, 0 in flight, 2 done, 1 failed since start"  # + the sentinel
    shown = cli(config, "jobs", "show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "stored_answer: dropped 20" in shown.stdout
    assert f"result_file: {drop.resolve()}/" in shown.stdout
    exported = cli(config, "export", "--format", "jsonl", "--state", "done")
    assert exported.returncode == 0 and "exported 2 document(s)" in exported.stderr
    assert {json.loads(line)["source"] for line in exported.stdout.splitlines()} == {
        "a.txt",
        "b.txt",
    }
    assert results_under(drop)["a.txt.json"]["status"] == "success"
    report = cli(config, "report", "--format", "json")
    assert report.returncode == 0 and len(json.loads(report.stdout)) == 3  # and the sentinel


def test_answers_kept_in_job_rows_move_to_their_own_table(db_url: str) -> None:
    """Migration 0010: kept answers move to `answers`, dropped ones stay dropped, the
    column goes; on SQLite the job table is packed anew and its old pages given back."""
    store = Store(db_url)
    store.upgrade("0009")
    body = json.dumps(answer("x" * 800))
    rows = [
        {"id": n, "path": f"{n}.pdf", "sha": SHA, "state": "done", "eid": f"e-{n}"}
        | {"body": body, "finished": 1000.0 + n}
        for n in range(1, 301)
    ]
    with store.engine.begin() as conn:
        conn.execute(sa.text(OLD_JOB), rows)
        conn.execute(sa.text(OLD_RESULT), [{**rows[0], "body": None}])
        # What expiry did before: the answers of all but the last ten set to NULL in place.
        conn.execute(sa.text("UPDATE jobs SET result_body = NULL WHERE id <= 290"))
        # Finished at 1300, updated since (a newer version of its path was seen, say).
        conn.execute(sa.text("UPDATE jobs SET updated_at = 5000 WHERE id = 300"))
    before = checkpointed_size(Path(store.db.sqlite_file())) if store.db.is_sqlite else 0
    store.upgrade()
    with store.engine.begin() as conn:
        assert answer_rows(conn) == 10
        columns = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        assert "result_body" not in columns and "version" in columns
    by_id = {job.id: job for job in store.list_jobs()}
    assert by_id[300].result_body == json.loads(body) and by_id[1].result_body is None
    assert store.stored_result("e-1") is None  # its answer had expired
    assert store.stored_result("e-300") is None  # never kept by execution id: no row
    # Finished by 1300, all ten are due at 3000, also the one updated at 5000.
    assert store.drop_expired_answers(time.time() - 3000, stored_cost) == 10
    with store.engine.begin() as conn:
        assert answer_rows(conn) == 0
    if store.db.is_sqlite:
        with store.engine.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
        # 300 rows of about 1 KiB before, about 300 B now: the pages of the old table are gone.
        assert checkpointed_size(Path(store.db.sqlite_file())) < before - 150_000
    store.close()
