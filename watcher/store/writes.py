"""What every state change of the store shares: the claim it ends, the fence, the retries.

The store's query modules (`discovery`, `uploads`, `polls`, `results`, `leases`) are parts
of one `Store`; this is the part they stand on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.jobs import Decision, Job, JobState
from watcher.logs import get_logger
from watcher.store.database import Clock, Database
from watcher.store.driver import Prepared
from watcher.store.errors import TRANSIENT_DB_ERRORS
from watcher.store.schema import job_from
from watcher.store.statements import Statements, pipelines_params

DEFAULT_LEASE_SECONDS = 300.0
OUTAGE_RETRY_SECONDS = 10.0
P = ParamSpec("P")
T = TypeVar("T")
B = TypeVar("B", bound="StoreBase")
log = get_logger()


class StoreBase:
    """The database, its prebuilt statements, its clock and the lease of a claim."""

    def __init__(self, db: Database, lease_seconds: float) -> None:
        self._db = db
        self._lease_seconds = lease_seconds
        self.sql = Statements(db.now, db.insert)
        self.clock = Clock(lambda: self.now())  # late-bound: a test may replace `now`

    @property
    def db(self) -> Database:
        return self._db

    @property
    def lease_seconds(self) -> float:
        """How long a claim (an upload, a poll, a fetch, a file write) is ours; past it,
        another instance may take the job over. Longer than any single HTTP call."""
        return self._lease_seconds

    def now(self) -> float:
        """The database's clock now (epoch seconds), read from it."""
        with self.db.read() as conn:
            return float(conn.execute(sa.select(self.db.now)).scalar_one())

    def let_go(self, claimed: Iterable[Job]) -> None:
        """The loop will not record these claimed jobs: their leases are no longer renewed,
        and `release_orphans` gives them back (the job is taken again, by this or another
        instance, as after a lost answer)."""
        self.db.let_go(claimed)

    def fenced_update(self, job: Job, expected: JobState, values: dict[str, Any]) -> bool:
        """A state change that ends the job's claim."""
        with self.db.write(ending=[job]) as conn:
            return self.sql.fenced(conn, job, expected, values)

    def until_stored(
        self, what: str, write: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Retry `write` for as long as the database is down; a daemon that stops ends the
        wait with the last error."""
        while True:
            try:
                return write(*args, **kwargs)
            except TRANSIENT_DB_ERRORS:
                log.error(
                    f"cannot store {what}: the database is unreachable; keeping it in "
                    "memory and retrying",
                    retry_in_seconds=OUTAGE_RETRY_SECONDS,
                )
                if not self.db.wait(OUTAGE_RETRY_SECONDS):
                    raise

    def claim_many(
        self, point: str, statement: Prepared, owner: str, limit: int, pipelines: list[str]
    ) -> list[Job]:
        """Run a claim statement that leases up to `limit` jobs; in id order."""
        params = {
            "owner": owner,
            "limit": limit,
            "lease_seconds": self.lease_seconds,
            **pipelines_params(pipelines),
        }

        def claim(conn: Connection) -> list[Job]:
            claimed = statement.run(conn, params, len(pipelines))
            return [job_from(row) for row in claimed.mappings()]

        return sorted(self.db.claim(point, claim), key=lambda job: job.id)

    def due_in(self, column: Any, state: JobState, pipelines: list[str]) -> float | None:
        """Seconds until the earliest `column` of a job in `state` (<= 0: now); None: none."""
        with self.db.read() as conn:
            due = self.sql.due[state, column.name]
            first = due.run(conn, pipelines_params(pipelines), len(pipelines)).rows[0][0]
        return None if first is None else float(first)

    def decision_values(self, decision: Decision, http_status: int | None) -> dict[str, Any]:
        """The columns a decision sets, with times from the database's clock."""
        now = self.clock()
        values: dict[str, Any] = {
            "state": decision.state.value,
            "last_error": decision.error,
            "last_http_status": http_status,
            "updated_at": now,
        }
        if decision.alone:
            values["alone"] = True
        if decision.state in (JobState.QUEUED, JobState.HELD):
            values.update(
                next_attempt_at=now + decision.delay_seconds, lease_owner=None, lease_until=None
            )
        elif decision.state is JobState.SUBMITTED:
            values.update(next_poll_at=now + decision.delay_seconds, lease_until=None)
        elif decision.state is JobState.RESULT_STORED:
            values.update(outcome=decision.outcome, lease_until=None)
        return values


def ends_claim(
    method: Callable[Concatenate[B, Job, P], T],
) -> Callable[Concatenate[B, Job, P], T]:
    """The loop is done with the job's claim once this call returns or raises. The write
    lets go of it before its commit (`Database.write(ending=...)`): after the commit another
    loop of ours may claim the job anew, and that claim must stay held."""

    @functools.wraps(method)
    def ended(store: B, job: Job, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(store, job, *args, **kwargs)
        except BaseException:
            store.let_go([job])  # a lease left behind is an orphan: see release_orphans
            raise

    return ended
