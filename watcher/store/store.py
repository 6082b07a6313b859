"""The durable job table's queries, named by intent. Rows leave as frozen `Job`s.

With SQLite, one lock in this process serialises transactions (each a `BEGIN IMMEDIATE`).
With PostgreSQL, several instances share the table: claims use `FOR UPDATE SKIP LOCKED` and
leases, and every state change is fenced on (state, attempt, owner). Times are epoch seconds
from the database clock, so instances on several hosts agree.
"""

from __future__ import annotations

import fcntl
import functools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from watcher.crashpoints import answer_lost
from watcher.jobs import UNFINISHED, Decision, Job, JobState
from watcher.logs import get_logger
from watcher.notices import Draft
from watcher.store.held import HeldClaims
from watcher.store.instance_lock import lock_instance
from watcher.store.outbox import add_notices
from watcher.store.schema import create_engine, db_path, fs_path, jobs, results, to_job
from watcher.store.statements import Statements

DEFAULT_LEASE_SECONDS = 300.0
TRANSIENT_RETRIES = 8  # about half a minute of backoff
OUTAGE_RETRY_SECONDS = 10.0
CLOCK_RESYNC_SECONDS = 60.0
# Errors that mean "the database is unreachable for now", not "this query is wrong".
TRANSIENT_DB_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)
P = ParamSpec("P")
T = TypeVar("T")
log = get_logger()
CLAIM_LOCK_KEY = 0x5557_6174  # PostgreSQL advisory lock: one instance counts in-flight at a time
MIGRATION_LOCK_KEY = 0x5557_6D67  # ... and one instance runs the migrations at a time


@dataclass(frozen=True)
class KnownFile:
    """What the table remembers of the newest version of a path: enough to skip re-hashing."""

    sha256: str
    size: int
    mtime_ns: int


def retry_transient(method: Callable[P, T]) -> Callable[P, T]:
    """Retry a write on a transient database error (lost connection, failover, a lock held
    past busy_timeout), so an execution id or a read-once result in hand is not dropped.
    A retry after a commit whose answer was lost meets the fence and changes nothing."""

    @functools.wraps(method)
    def retried(*args: P.args, **kwargs: P.kwargs) -> T:
        delay = 0.5
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return method(*args, **kwargs)
            except TRANSIENT_DB_ERRORS as exc:
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
                log.warning("database error; retrying", error=db_error_text(exc),
                            retry_in_seconds=delay)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    return retried


def ends_claim(
    method: Callable[Concatenate[Store, Job, P], T],
) -> Callable[Concatenate[Store, Job, P], T]:
    """The loop is done with the job's claim once this call returns or raises. The write
    lets go of it before its commit (`_tx(ending=...)`): after the commit another loop of
    ours may claim the job anew, and that claim must stay held."""

    @functools.wraps(method)
    def ended(store: Store, job: Job, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(store, job, *args, **kwargs)
        except BaseException:
            store.let_go([job])  # a lease left behind is an orphan: see release_orphans
            raise

    return ended


def db_error_text(exc: sa.exc.DBAPIError) -> str:
    """The driver's one-line reason, without SQL or parameters (which may hold a result)."""
    return str(exc.orig).strip().splitlines()[0][:200] if exc.orig else type(exc).__name__


class StoreError(Exception):
    """The database cannot be reached or set up; the message says why (never a password)."""


class Store:
    def __init__(
        self,
        url: str,
        busy_timeout_seconds: float = 30.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.url = url
        # How long a claim (an upload, a poll, a fetch, a file write) is ours; past it, another
        # instance may take the job over. Longer than any single HTTP call.
        self.lease_seconds = lease_seconds
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            database = sa.engine.make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, busy_timeout_seconds)
        self._lock_file: IO[str] | None = None  # SQLite: one daemon per database file
        self._instance_conn: Connection | None = None  # PostgreSQL: holds the instance lock
        self._lock: AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else nullcontext()
        )
        self._insert = sqlite_insert if self.is_sqlite else postgresql_insert
        self._now = (
            sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Double)
            if self.is_sqlite
            else sa.literal_column("extract(epoch from clock_timestamp())::float8", sa.Double)
        )

        self._sql = Statements(self._now, self._insert)
        self._held = HeldClaims()
        self._clock_offset = 0.0
        self._clock_read_at = -CLOCK_RESYNC_SECONDS

    # -- plumbing ------------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Create or upgrade the schema to the newest alembic revision."""
        from alembic import command
        from alembic.config import Config

        try:
            with as_file(files("watcher._migrations")) as folder, self._tx() as conn:
                if not self.is_sqlite:  # instances starting together migrate one at a time
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                config = Config()
                config.set_main_option("script_location", str(folder))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except sa.exc.SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            raise StoreError(str(detail).strip().splitlines()[0]) from None

    def lock_for_daemon(self, owner: str) -> None:
        """Refuse to run beside another daemon that would take over our claims.

        SQLite serves one daemon per file (an operator's `run --once` beside the service
        would release the service's claims). On PostgreSQL each instance id may run once:
        two with the same id would release and renew each other's leases.
        """
        if not self.is_sqlite:
            self._lock_instance_id(owner)
            return
        database = sa.engine.make_url(self.url).database
        if not database or database == ":memory:":
            return
        self._lock_file = open(f"{database}.lock", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise StoreError(
                f"another unstract-watcher daemon is using {database}; stop it first "
                "(operator commands such as status and retry work beside it)"
            ) from None

    def _lock_instance_id(self, owner: str) -> None:
        conn = lock_instance(self.engine, owner)
        if conn is None:
            raise StoreError(
                f"another unstract-watcher instance with instance_id {owner!r} is running on "
                "this database; give each instance its own daemon.instance_id"
            )
        self._instance_conn = conn

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
        if self._instance_conn is not None:
            # Closed for real, not returned to the pool: that ends the session and its lock.
            self._instance_conn.invalidate()
            self._instance_conn.close()
            self._instance_conn = None
        self.engine.dispose()

    @contextmanager
    def _tx(self, lose_answer_at: str = "", ending: Iterable[Job] = ()) -> Iterator[Connection]:
        """A write transaction; the claims of `ending` are let go just before its commit,
        while their rows are still locked by it. If it fails, they are held again: the
        caller may try once more, and until it gives up they are its own."""
        ending = list(ending)
        # The connection is checked out before the lock is taken: the lock covers only the
        # transaction itself, which every writer of this process waits for.
        try:
            with self.engine.connect() as conn, self._lock, conn.begin():
                yield conn
                self._held.drop(job.id for job in ending)  # ended by this commit
            if lose_answer_at and answer_lost(lose_answer_at):
                raise sa.exc.OperationalError(
                    "COMMIT", None, ConnectionError("connection lost after the commit")
                )
        except BaseException as exc:
            self._held.take(job.id for job in ending)
            if isinstance(exc, TRANSIENT_DB_ERRORS):
                # The commit may have gone through: a lease of ours may be held by no loop.
                self._held.doubt()
            raise

    def _claim(
        self, point: str, claim: Callable[[Connection], list[Job]], ending: Iterable[Job] = ()
    ) -> list[Job]:
        """Run a claim. Its jobs are held (renewed) from before the commit; if the commit's
        answer is lost, they are noted as never handed out, for `release_orphans`."""
        found: list[Job] = []
        try:
            with self._tx(lose_answer_at=point, ending=ending) as conn:
                found = claim(conn)
                self._held.take(job.id for job in found)
        except BaseException:
            self._held.never_handed_out(job.id for job in found)
            raise
        return found

    def let_go(self, claimed: Iterable[Job]) -> None:
        """The loop will not record these claimed jobs: their leases are no longer renewed,
        and `release_orphans` gives them back (the job is taken again, by this or another
        instance, as after a lost answer)."""
        if self._held.drop(job.id for job in claimed):
            self._held.doubt()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction: no write lock (WAL readers never wait for the writer)."""
        with self.engine.connect() as conn:
            conn.execution_options(read_only=True)
            with conn.begin():
                yield conn

    def now(self) -> float:
        with self._read() as conn:
            return float(conn.execute(sa.select(self._now)).scalar_one())

    def clock(self) -> float:
        """The database's clock (epoch seconds), read once a minute and carried on by ours in
        between: state changes take their times from it without a query of their own."""
        ours = time.monotonic()
        if ours - self._clock_read_at >= CLOCK_RESYNC_SECONDS:
            try:
                self._clock_offset = self.now() - time.monotonic()
            except TRANSIENT_DB_ERRORS:
                if self._clock_read_at < 0:  # never read: nothing to carry on
                    raise
                # Carry on with the last offset: a result in hand must not wait for this.
            self._clock_read_at = ours
        return ours + self._clock_offset

    # -- discovery -----------------------------------------------------------------------------

    def known_files(self, pipeline: str) -> dict[str, KnownFile]:
        """Newest version of every path of a pipeline, for the watcher's change check."""
        query = (
            sa.select(jobs.c.relative_path, jobs.c.relative_path_raw, jobs.c.sha256,
                      jobs.c.size, jobs.c.mtime_ns)
            .where(jobs.c.pipeline == pipeline)
            .order_by(jobs.c.id)
        )  # fmt: skip
        with self._read() as conn:
            rows = conn.execute(query).all()
        return {
            fs_path(row.relative_path, row.relative_path_raw): KnownFile(
                row.sha256, row.size, row.mtime_ns
            )
            for row in rows
        }

    def enqueue(
        self, pipeline: str, relative_path: str, sha256: str, size: int, mtime_ns: int
    ) -> int | None:
        """Queue this content at this path unless it is known; return the job id if queued."""
        return self.enqueue_many(pipeline, [(relative_path, sha256, size, mtime_ns)])[0]

    @retry_transient
    def enqueue_many(
        self, pipeline: str, files: Sequence[tuple[str, str, int, int]]
    ) -> list[int | None]:
        """Queue each (relative path, sha256, size, mtime_ns) unless that content at that path
        is known, in one transaction; return each one's new job id, or None if known.

        A version that was skipped (it vanished or changed before upload) and is back is
        queued again; any other known version only gets its size and mtime refreshed, so the
        next scan skips it cheaply.
        """
        now = self.clock()
        with self._tx() as conn:
            # In path order: instances inserting overlapping batches take row locks in the
            # same order, so they wait for each other instead of deadlocking.
            order = sorted(range(len(files)), key=lambda index: files[index][0])
            ids = {i: self._enqueue_one(conn, pipeline, *files[i], now) for i in order}
        return [ids[index] for index in range(len(files))]

    def _enqueue_one(
        self, conn: Connection, pipeline: str, relative_path: str, sha256: str, size: int,
        mtime_ns: int, now: float,
    ) -> int | None:  # fmt: skip
        path, raw = db_path(relative_path)
        values = dict(
            pipeline=pipeline, relative_path=path, relative_path_raw=raw, sha256=sha256,
            size=size, mtime_ns=mtime_ns, state=JobState.QUEUED.value,
            next_attempt_at=now, created_at=now, updated_at=now,
        )  # fmt: skip
        # Another instance watching the same share may insert the same document first.
        row = conn.execute(self._sql.insert_job, values).first()
        if row is not None:
            return int(row[0])
        key = {"b_pipeline": pipeline, "b_path": path, "b_sha256": sha256}
        revived = conn.execute(
            self._sql.revive_skipped,
            {**key, "state": JobState.QUEUED.value, "next_attempt_at": now, "last_error": "",
             "size": size, "mtime_ns": mtime_ns, "finished_at": None, "updated_at": now},
        ).first()  # fmt: skip
        if revived is not None:
            return int(revived[0])
        conn.execute(self._sql.refresh_known, {**key, "size": size, "mtime_ns": mtime_ns})
        return None

    # -- upload --------------------------------------------------------------------------------

    def claim_for_upload(self, owner: str, limits: Mapping[str, int]) -> Job | None:
        """Take the next due queued job of a pipeline that has room for another execution."""
        found = self._claim("upload_claim", lambda conn: self._claim_upload_in(conn, owner, limits))
        return found[0] if found else None

    def _claim_upload_in(
        self, conn: Connection, owner: str, limits: Mapping[str, int]
    ) -> list[Job]:
        if not self.is_sqlite:
            # Instances count in-flight executions one at a time: max_in_flight holds for all.
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
        busy: dict[str, int] = dict(conn.execute(self._sql.in_flight_by_pipeline).all())
        open_pipelines = [p for p, limit in limits.items() if busy.get(p, 0) < limit]
        if not open_pipelines:
            return []
        row = conn.execute(
            self._sql.claim_upload,
            {"claim_owner": owner, "pipelines": open_pipelines,
             "lease_seconds": self.lease_seconds},
        ).first()  # fmt: skip
        return [to_job(row)] if row else []

    @ends_claim
    def record_submit(self, job: Job, decision: Decision, http_status: int | None) -> bool:
        """Apply what the upload worker decided; fenced on the claim. False if it was lost.

        An accepted upload's execution id is the only link to what the server now runs: its
        write is retried for as long as the database is down (dropped, the document would
        be submitted again as an interrupted upload)."""
        if decision.state is not JobState.SUBMITTED:
            return self._record_submit(job, decision, http_status)
        return self._until_stored(
            "an accepted upload's execution id", self._record_submit, job, decision, http_status
        )

    @retry_transient
    def _record_submit(self, job: Job, decision: Decision, http_status: int | None) -> bool:
        return self._fenced_update(job, JobState.SUBMITTING, self._submit_values(
            job, decision, http_status))  # fmt: skip

    def _until_stored(
        self, what: str, write: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        while True:
            try:
                return write(*args, **kwargs)
            except TRANSIENT_DB_ERRORS:
                log.error(f"cannot store {what}: the database is unreachable; keeping it in "
                          "memory and retrying", retry_in_seconds=OUTAGE_RETRY_SECONDS)  # fmt: skip
                time.sleep(OUTAGE_RETRY_SECONDS)

    @ends_claim
    def record_submit_and_claim(
        self, job: Job, decision: Decision, http_status: int | None, owner: str,
        limits: Mapping[str, int],
    ) -> tuple[bool, Job | None]:  # fmt: skip
        """`record_submit`, and the worker's next claim in the same transaction: one
        transaction a document instead of two (every writer of SQLite waits for each).
        Through an outage, the answer alone is kept trying, as `record_submit` does."""
        try:
            return self._record_submit_and_claim(job, decision, http_status, owner, limits)
        except TRANSIENT_DB_ERRORS:
            return self.record_submit(job, decision, http_status), None

    @retry_transient
    def _record_submit_and_claim(
        self, job: Job, decision: Decision, http_status: int | None, owner: str,
        limits: Mapping[str, int],
    ) -> tuple[bool, Job | None]:  # fmt: skip
        values = self._submit_values(job, decision, http_status)
        recorded = False

        def record_and_claim(conn: Connection) -> list[Job]:
            nonlocal recorded
            recorded = self._fenced(conn, job, JobState.SUBMITTING, values)
            return self._claim_upload_in(conn, owner, limits)

        found = self._claim("upload_claim", record_and_claim, ending=[job])
        return recorded, found[0] if found else None

    def _submit_values(
        self, job: Job, decision: Decision, http_status: int | None
    ) -> dict[str, Any]:
        values: dict[str, Any] = self._decision_values(decision, http_status)
        if decision.state is JobState.SUBMITTED:
            values.update(
                execution_id=decision.execution_id, submitted_at=values["updated_at"], poll_count=0
            )
        if decision.refund_attempt:
            values["attempts"] = job.attempts - 1  # the fence makes sure it is still that
        return values

    @ends_claim
    @retry_transient
    def skip(self, job: Job, reason: str) -> bool:
        values = {"state": JobState.SKIPPED.value, "last_error": reason,
                  "finished_at": self.clock()}  # fmt: skip
        return self._fenced_update(job, JobState.SUBMITTING, values)

    def renew_leases(self, owner: str) -> int:
        """Extend the claims this instance's loops hold (a live instance never loses one,
        however slow an upload is); a claimed poll's next_poll_at moves with its lease."""
        held = self._held.held()
        if not held:
            return 0
        mine = (
            (jobs.c.lease_owner == owner)
            & jobs.c.lease_until.is_not(None)
            & jobs.c.id.in_(sorted(held))
        )
        renewed = self._now + self.lease_seconds
        with self._tx() as conn:
            count = conn.execute(
                sa.update(jobs).where(mine & (jobs.c.state != JobState.SUBMITTED.value))
                .values(lease_until=renewed)
            ).rowcount  # fmt: skip
            count += conn.execute(
                sa.update(jobs).where(mine & (jobs.c.state == JobState.SUBMITTED.value))
                .values(lease_until=renewed, next_poll_at=renewed)
            ).rowcount  # fmt: skip
        return int(count)

    def next_attempt_due_in(self, pipelines: list[str]) -> float | None:
        """Seconds until the earliest queued job may be uploaded (<= 0: now); None: none."""
        return self._due_in(jobs.c.next_attempt_at, JobState.QUEUED, pipelines)

    def next_poll_due_in(self, pipelines: list[str]) -> float | None:
        """Seconds until the earliest status poll is due (<= 0: now); None: none."""
        return self._due_in(jobs.c.next_poll_at, JobState.SUBMITTED, pipelines)

    def _due_in(self, column: Any, state: JobState, pipelines: list[str]) -> float | None:
        with self._read() as conn:
            due = conn.execute(self._sql.due[state, column.name], {"pipelines": pipelines})
            first = due.scalar_one()
        return None if first is None else float(first)

    def make_queued_due(self, pipeline: str) -> int:
        """Queued jobs of a pipeline may go now (after a pause ends); return how many."""
        with self._tx() as conn:
            result = conn.execute(
                sa.update(jobs)
                .where(jobs.c.pipeline == pipeline)
                .where(jobs.c.state == JobState.QUEUED.value)
                .values(next_attempt_at=self._now)
            )
        return int(result.rowcount)

    # -- reconcile -----------------------------------------------------------------------------

    def claim_due_polls(self, owner: str, limit: int, pipelines: list[str]) -> list[Job]:
        """Take executions whose next poll is due. Moving next_poll_at a lease ahead keeps
        other instances off them until we record the answer (or die)."""
        return self._claim_many("poll_claim", self._sql.claim_polls, owner, limit, pipelines)

    def _claim_many(
        self, point: str, statement: Any, owner: str, limit: int, pipelines: list[str]
    ) -> list[Job]:
        params = {"owner": owner, "limit": limit, "pipelines": pipelines,
                  "lease_seconds": self.lease_seconds}  # fmt: skip

        def claim(conn: Connection) -> list[Job]:
            return [to_job(row) for row in conn.execute(statement, params).all()]

        return sorted(self._claim(point, claim), key=lambda job: job.id)

    @ends_claim
    @retry_transient
    def release_poll(self, job: Job) -> bool:
        """Give back a claimed poll not made (its pipeline was removed by a reload): it is
        due again at once for whoever serves that pipeline."""
        values = {"lease_owner": None, "lease_until": None, "next_poll_at": self.clock()}
        return self._fenced_update(job, JobState.SUBMITTED, values)

    def begin_fetch(self, job: Job) -> bool:
        """Mark that a read-once result is being fetched, before the request is sent. False:
        the claim is lost (or its answer was: then `release_orphans` sends it back to
        polling), and nothing may be fetched."""
        started = False
        try:
            started = self._begin_fetch(job)
        finally:
            if not started:
                self.let_go([job])
        return started

    @retry_transient
    def _begin_fetch(self, job: Job) -> bool:
        now = self.clock()
        values = {"state": JobState.FETCHING.value, "updated_at": now,
                  "lease_until": now + self.lease_seconds}  # fmt: skip
        with self._tx(lose_answer_at="fetch_claim") as conn:
            return self._fenced(conn, job, JobState.SUBMITTED, values)

    @ends_claim
    def record_poll(
        self,
        job: Job,
        decision: Decision,
        http_status: int | None,
        body: Any = None,
        fetching: bool = False,
    ) -> bool:
        """Apply a poll's (or a fetch's) decision. A result is stored in the same transaction,
        also in `results` by execution id, kept even if the job was taken over meanwhile.

        A terminal body in hand may be the only copy there is (the server hands it out once):
        its write is retried for as long as the database is down, never dropped.
        """
        if body is None:
            return self._record_poll(job, decision, http_status, body, fetching)
        return self._until_stored("a result that the API hands out once", self._record_poll,
                                  job, decision, http_status, body, fetching)  # fmt: skip

    @retry_transient
    def _record_poll(
        self, job: Job, decision: Decision, http_status: int | None, body: Any, fetching: bool
    ) -> bool:
        values: dict[str, Any] = self._decision_values(decision, http_status)
        values["poll_count"] = job.poll_count + 1  # only the claim's holder polls it
        if body is not None:
            values["result_body"] = json.dumps(body)
        if decision.state is JobState.QUEUED:
            values["execution_id"] = None
        expected = JobState.FETCHING if fetching else JobState.SUBMITTED
        with self._tx(ending=[job]) as conn:
            if body is not None and decision.outcome is not None and job.execution_id:
                kept = dict(
                    execution_id=job.execution_id, job_id=job.id, outcome=decision.outcome,
                    error=decision.error, body=values["result_body"],
                    created_at=values["updated_at"],
                )  # fmt: skip
                conn.execute(self._insert(results).values(**kept).on_conflict_do_nothing())
            return self._fenced(conn, job, expected, values)

    def stored_result(self, execution_id: str) -> tuple[str, str, Any] | None:
        """(outcome, error, body) of an execution's terminal answer, if one was ever stored."""
        query = sa.select(results.c.outcome, results.c.error, results.c.body).where(
            results.c.execution_id == execution_id
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return row.outcome, row.error, json.loads(row.body) if row.body else None

    # -- output --------------------------------------------------------------------------------

    def claim_stored_results(self, owner: str, limit: int, pipelines: list[str]) -> list[Job]:
        """Take jobs whose outcome is stored, to write their files (one instance per job)."""
        return self._claim_many("result_claim", self._sql.claim_results, owner, limit, pipelines)

    def mark_finished(self, job: Job) -> bool:
        return self.mark_finished_many([job])[0]

    def mark_finished_many(
        self, finished: Sequence[Job], notices: Mapping[int, Draft] | None = None
    ) -> list[bool]:
        """Their files are written: done or failed, in one transaction; fenced on the claim.
        A job's notice (by job id) goes into the outbox in the same transaction, if its
        change was made."""
        try:
            return self._mark_finished_many(finished, notices or {})
        except BaseException:
            self.let_go(finished)
            raise

    @retry_transient
    def _mark_finished_many(
        self, finished: Sequence[Job], notices: Mapping[int, Draft]
    ) -> list[bool]:
        now = self.clock()
        with self._tx(ending=finished) as conn:  # in id order, as other multi-row updates lock them
            done = {
                job.id: self._fenced(conn, job, JobState.RESULT_STORED, self._finished(job, now))
                for job in sorted(finished, key=lambda job: job.id)
            }
            drafts = (d for job_id, d in notices.items() if done.get(job_id))
            add_notices(conn, drafts, now)
        return [done[job.id] for job in finished]

    @staticmethod
    def _finished(job: Job, now: float) -> dict[str, Any]:
        state = JobState.DONE if job.outcome == "success" else JobState.FAILED
        return {"state": state.value, "finished_at": now, "updated_at": now, "lease_owner": None}

    # -- recovery and counts -------------------------------------------------------------------

    def release_claims(
        self, everything: bool = False, owner: str | None = None, hold: Sequence[str] = ()
    ) -> tuple[int, int]:
        """Take back the claims of instances that are gone: those whose lease ran out, those of
        `owner` (this instance's earlier life), or all (SQLite: we are the only instance).
        Return (interrupted uploads, interrupted fetches).

        An interrupted upload may have reached the server. It is submitted again, the one
        window where a document can be executed twice, unless its pipeline is in `hold`: then
        it waits for an operator (README, "What happens when..."). An interrupted fetch goes
        back to polling: the status says whether the result is still there.
        """
        gone = sa.true() if everything else jobs.c.lease_until < self._now
        if owner is not None and not everything:
            gone = gone | (jobs.c.lease_owner == owner)
        with self._tx() as conn:
            return self._release(conn, gone, hold)

    def claims_in_doubt(self) -> bool:
        """A write's answer was lost since the last `release_orphans`."""
        return self._held.in_doubt

    def release_orphans(self, owner: str, hold: Sequence[str] = ()) -> int:
        """After a write whose answer was lost: give back every lease of ours that no loop
        holds; return how many. A claim never handed to a loop goes back as it was (nothing
        was sent, the attempt is refunded); anything else as `release_claims` treats a dead
        instance's: an upload that was sent counts as interrupted, a fetch goes back to
        polling, a poll is due at once, a result is free to be written."""
        if not self._held.in_doubt:
            return 0
        try:
            with self._tx() as conn:
                orphans, unsent = self._orphans(conn, owner)
                if not orphans:
                    self._held.checked(unsent)
                    return 0
                unused = jobs.c.id.in_(sorted(orphans & unsent))
                conn.execute(
                    sa.update(jobs)
                    .where(unused & (jobs.c.state == JobState.SUBMITTING.value))
                    .values(state=JobState.QUEUED.value, attempts=jobs.c.attempts - 1,
                            next_attempt_at=self._now, lease_owner=None, lease_until=None)
                )  # fmt: skip
                uploads, fetches = self._release(conn, jobs.c.id.in_(sorted(orphans)), hold)
        except BaseException:
            self._held.doubt()
            raise
        self._held.checked(unsent)
        log.warning("claims whose answer was lost with the database connection are released",
                    jobs=len(orphans), never_sent=len(orphans & unsent),
                    interrupted_uploads=uploads, interrupted_fetches=fetches)  # fmt: skip
        return len(orphans)

    def _orphans(self, conn: Connection, owner: str) -> tuple[set[int], frozenset[int]]:
        """(rows leased to us that no loop holds, ids never handed out). The rows are locked
        first: a claim of ours still committing is held before its commit, so once its rows
        can be locked, the held set read after includes them."""
        self._held.clear_doubt()
        leased = conn.execute(
            sa.select(jobs.c.id)
            .where((jobs.c.lease_owner == owner) & jobs.c.lease_until.is_not(None))
            .order_by(jobs.c.id)
            .with_for_update()
        ).scalars()  # fmt: skip
        held, unsent = self._held.snapshot()
        return {int(i) for i in leased} - held, unsent

    def _release(self, conn: Connection, gone: Any, hold: Sequence[str]) -> tuple[int, int]:
        free = dict(lease_owner=None, lease_until=None, updated_at=self._now)
        uploads = self._requeue_uploads(conn, gone, hold)
        fetches = conn.execute(
            sa.update(jobs)
            .where((jobs.c.state == JobState.FETCHING.value) & gone)
            .values(state=JobState.SUBMITTED.value, next_poll_at=self._now,
                    last_error="result fetch interrupted; checking the status", **free)
        ).rowcount  # fmt: skip
        conn.execute(
            sa.update(jobs)
            .where((jobs.c.state == JobState.SUBMITTED.value) & gone)
            .where(jobs.c.lease_until.is_not(None))
            .values(next_poll_at=self._now, **free)
        )
        conn.execute(
            sa.update(jobs)
            .where((jobs.c.state == JobState.RESULT_STORED.value) & gone)
            .values(**free)
        )
        return uploads, int(fetches)

    def _requeue_uploads(self, conn: Connection, gone: Any, hold: Sequence[str]) -> int:
        interrupted = (jobs.c.state == JobState.SUBMITTING.value) & gone
        held = jobs.c.pipeline.in_(list(hold))
        free = dict(lease_owner=None, lease_until=None, updated_at=self._now)
        resubmitted = conn.execute(
            sa.update(jobs)
            .where(interrupted & ~held)
            .values(state=JobState.QUEUED.value, next_attempt_at=self._now,
                    last_error="upload interrupted; outcome unknown, submitting again", **free)
        ).rowcount  # fmt: skip
        kept = conn.execute(
            sa.update(jobs)
            .where(interrupted & held)
            .values(state=JobState.HELD.value,
                    last_error="upload interrupted; outcome unknown, held for an operator", **free)
        ).rowcount  # fmt: skip
        return int(resubmitted) + int(kept)

    def unfinished_count(self, pipelines: list[str]) -> int:
        query = (
            sa.select(sa.func.count())
            .where(jobs.c.state.in_([s.value for s in UNFINISHED]))
            .where(jobs.c.pipeline.in_(pipelines))
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def list_jobs(self, pipeline: str | None = None) -> list[Job]:
        query = sa.select(jobs).order_by(jobs.c.id)
        if pipeline is not None:
            query = query.where(jobs.c.pipeline == pipeline)
        with self._tx() as conn:
            return [to_job(row) for row in conn.execute(query).all()]

    # -- helpers -------------------------------------------------------------------------------

    def _decision_values(self, decision: Decision, http_status: int | None) -> dict[str, Any]:
        now = self.clock()
        values: dict[str, Any] = {
            "state": decision.state.value,
            "last_error": decision.error,
            "last_http_status": http_status,
            "updated_at": now,
        }
        if decision.state in (JobState.QUEUED, JobState.HELD):
            values.update(
                next_attempt_at=now + decision.delay_seconds, lease_owner=None, lease_until=None
            )
        elif decision.state is JobState.SUBMITTED:
            values.update(next_poll_at=now + decision.delay_seconds, lease_until=None)
        elif decision.state is JobState.RESULT_STORED:
            values.update(outcome=decision.outcome, lease_until=None)
        return values

    def _fenced_update(self, job: Job, expected: JobState, values: dict[str, Any]) -> bool:
        """A state change that ends the job's claim."""
        with self._tx(ending=[job]) as conn:
            return self._fenced(conn, job, expected, values)

    def _fenced(
        self, conn: Connection, job: Job, expected: JobState, values: dict[str, Any]
    ) -> bool:
        """Update only if the row is still as we claimed it: same state, attempt and owner.
        An instance whose lease ran out and was taken over changes nothing. `values` are
        plain values (the SET clause is built from their keys on a prebuilt statement)."""
        fence = {"b_id": job.id, "b_state": expected.value, "b_attempts": job.attempts,
                 "b_owner": job.lease_owner}  # fmt: skip
        return bool(conn.execute(self._sql.fenced_stmt, {**values, **fence}).rowcount)
