"""The store's own settings: its waits end when the daemon stops, and a job's state moves
only along the allowed transitions. On a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from watcher.jobs import Decision, JobState
from watcher.store import IllegalTransition, Store, db_error_text
from watcher.store.operator import jobs_newest_first

SHA_A = "a" * 64
PROMPT_SECONDS = 5.0  # the waits it ends are about half a minute, or endless
ACCEPTED = Decision(JobState.SUBMITTED, 0.0, execution_id="e-1")


def run_in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def stop_once_waiting(
    logs: list[dict[str, Any]], stop: threading.Event, thread: threading.Thread
) -> float:
    """Set `stop` once the store said it waits to try again; return how long the call took
    to end after that."""
    deadline = time.monotonic() + 30
    while not any("retry_in_seconds" in line for line in logs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.is_alive(), "the call ended before it waited"
    stopped_at = time.monotonic()
    stop.set()
    thread.join(PROMPT_SECONDS * 2)
    assert not thread.is_alive()
    return time.monotonic() - stopped_at


def test_an_outage_wait_for_an_execution_id_ends_when_the_daemon_stops(sqlite_url: str) -> None:
    stop = threading.Event()
    store = Store(sqlite_url, busy_timeout_seconds=0.1, stop=stop)
    store.upgrade()
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    database = sa.engine.make_url(sqlite_url).database or ""
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the write lock held, for as long as the test runs
    try:
        # Without the stop this write is retried for as long as the lock is held.
        with capture_logs() as logs:
            thread, raised = run_in_thread(lambda: store.record_submit(job, ACCEPTED, 200))
            assert stop_once_waiting(logs, stop, thread) < PROMPT_SECONDS
        assert len(raised) == 1 and isinstance(raised[0], sa.exc.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


def test_a_retry_wait_ends_when_the_daemon_stops_on_a_database_that_is_down() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")
    stop = threading.Event()
    store.stop_waits_on(stop)
    try:
        with capture_logs() as logs:
            thread, raised = run_in_thread(lambda: store.enqueue("p", "a.pdf", SHA_A, 1, 1))
            assert stop_once_waiting(logs, stop, thread) < PROMPT_SECONDS
        assert len(raised) == 1 and isinstance(raised[0], sa.exc.OperationalError)
    finally:
        store.close()


def test_a_write_along_a_transition_not_in_the_table_is_refused(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None and store.record_submit(job, ACCEPTED, 200)
    polled = store.claim_due_polls("me", 10, ["p"])[0]
    with pytest.raises(IllegalTransition, match="submitted to held"):
        store.record_poll(polled, Decision(JobState.HELD), None)
    assert store.list_jobs()[0].state is JobState.SUBMITTED


def test_leftover_claims_at_start_follow_the_database(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    store.enqueue("p", "b.pdf", SHA_A, 1, 1)
    assert store.claim_for_upload("another-host", {"p": 5}) is not None
    assert store.claim_for_upload("me", {"p": 5}) is not None
    # SQLite serves one daemon: every claim is ours. PostgreSQL: only our own, and expired.
    assert store.release_leftover_claims("me") == ((2 if store.sole_writer else 1), 0)
    assert store.sole_writer is store.url.startswith("sqlite")


def test_newest_first_is_the_operators_order(store: Store) -> None:
    ids = [store.enqueue("p", f"{name}.pdf", SHA_A, 1, 1) for name in "abc"]
    assert [job.id for job in jobs_newest_first(store)] == ids[::-1]
    assert [job.id for job in store.list_jobs()] == ids


def test_a_database_error_becomes_one_line_without_its_sql() -> None:
    error = sa.exc.OperationalError("SELECT secret", {"k": "v"}, Exception("gone\nmore"))
    assert db_error_text(error) == "gone"
    assert db_error_text(sa.exc.OperationalError("x", {}, Exception())) == "OperationalError"
