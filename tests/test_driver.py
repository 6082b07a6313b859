"""Statements run on the driver's cursor (watcher/store/driver.py): they fail as SQLAlchemy's
own do, so the store's retries and the pool's recovery work as before; on a real SQLite file
and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from watcher.jobs import Decision, JobState
from watcher.store import Store
from watcher.store.driver import Prepared
from watcher.store.errors import TRANSIENT_DB_ERRORS

SHA = "c" * 64


def test_a_driver_error_arrives_as_sqlalchemys_without_the_parameters(store: Store) -> None:
    missing = Prepared(lambda _: sa.text("SELECT secret FROM no_such_table WHERE x = :x"))
    with pytest.raises(sa.exc.DBAPIError) as caught, store.db.write() as conn:
        missing.run(conn, {"x": "a result body"})
    assert isinstance(caught.value, sa.exc.ProgrammingError | sa.exc.OperationalError)
    assert "no_such_table" in str(caught.value)
    assert "a result body" not in str(caught.value)
    # The failed write undid itself; the next one works.
    assert store.enqueue("p", "a.pdf", SHA, 1, 1) is not None


def test_each_set_of_columns_writes_only_its_own(store: Store) -> None:
    for name in ("a.pdf", "b.pdf"):
        store.enqueue("p", name, SHA, 1, 1)
    first = store.claim_for_upload("me", {"p": 5})
    second = store.claim_for_upload("me", {"p": 5})
    assert first is not None and second is not None
    store.record_submit(first, Decision(JobState.SUBMITTED, 5.0, execution_id="e-1"), 200)
    store.record_submit(second, Decision(JobState.QUEUED, 5.0, "busy"), 503)
    jobs = {job.relative_path: job for job in store.list_jobs()}
    assert (jobs["a.pdf"].state, jobs["a.pdf"].execution_id) == (JobState.SUBMITTED, "e-1")
    assert (jobs["a.pdf"].last_error, jobs["a.pdf"].last_http_status) == ("", 200)
    assert (jobs["b.pdf"].state, jobs["b.pdf"].execution_id) == (JobState.QUEUED, None)
    assert (jobs["b.pdf"].last_error, jobs["b.pdf"].last_http_status) == ("busy", 503)
    assert jobs["b.pdf"].lease_owner is None


@pytest.mark.postgres
def test_a_lost_connection_is_transient_and_dropped_from_the_pool(postgres_url: str) -> None:
    store = Store(postgres_url)
    store.upgrade()
    try:
        store.enqueue("p", "a.pdf", SHA, 1, 1)
        ask = Prepared(lambda _: sa.text("SELECT count(*) FROM jobs"))
        admin = sa.create_engine(postgres_url)
        with store.engine.connect() as conn:
            backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with admin.begin() as other:  # the server ends our session under us
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            with pytest.raises(TRANSIENT_DB_ERRORS):
                ask.run(conn, {})
            assert conn.invalidated
        admin.dispose()
        with store.db.read() as conn:
            assert ask.run(conn, {}).rows == [(1,)]
    finally:
        store.close()
