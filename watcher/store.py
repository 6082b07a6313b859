"""The durable job table. The only module that speaks SQL; rows leave it as frozen `Job`s.

SQLite (default) runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE` so a reader never has to upgrade its lock mid-transaction (the
SQLITE_BUSY_SNAPSHOT trap, reliability-notes B8); within this process one lock serialises them.
Times are epoch seconds from the database clock, so instances on several hosts agree.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from watcher.filters import as_text
from watcher.jobs import IN_FLIGHT, UNFINISHED, Decision, Job, JobState

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("relative_path", sa.Text, nullable=False),  # valid UTF-8 (see _db_path)
    sa.Column("relative_path_raw", sa.LargeBinary),  # the name's bytes, if not valid UTF-8
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("execution_id", sa.String(64)),
    sa.Column("poll_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_poll_at", sa.Double),
    sa.Column("outcome", sa.String(16)),
    sa.Column("result_body", sa.Text),
    sa.Column("last_http_status", sa.Integer),
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_until", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("submitted_at", sa.Double),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
    sa.UniqueConstraint("pipeline", "relative_path", "sha256", name="uq_jobs_document"),
)
sa.Index("ix_jobs_state_due", jobs.c.state, jobs.c.next_attempt_at)
sa.Index("ix_jobs_poll_due", jobs.c.state, jobs.c.next_poll_at)
sa.Index("ix_jobs_path", jobs.c.pipeline, jobs.c.relative_path)

SUBMIT_LEASE_SECONDS = 300.0


@dataclass(frozen=True)
class KnownFile:
    """What the table remembers of the newest version of a path: enough to skip re-hashing."""

    sha256: str
    size: int
    mtime_ns: int


class StoreError(Exception):
    """The database cannot be reached or set up; the message says why (never a password)."""


class Store:
    def __init__(self, url: str, busy_timeout_seconds: float = 30.0) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            database = sa.engine.make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = _create_engine(url, busy_timeout_seconds)
        self._lock: AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else nullcontext()
        )
        self._insert = sqlite_insert if self.is_sqlite else postgresql_insert
        self._now = (
            sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Double)
            if self.is_sqlite
            else sa.literal_column("extract(epoch from clock_timestamp())::float8", sa.Double)
        )

    # -- plumbing ------------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Create or upgrade the schema to the newest alembic revision."""
        from alembic import command
        from alembic.config import Config

        try:
            with as_file(files("watcher._migrations")) as folder, self._tx() as conn:
                config = Config()
                config.set_main_option("script_location", str(folder))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except sa.exc.OperationalError as exc:
            raise StoreError(str(exc.orig).strip()) from None

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._lock, self.engine.begin() as conn:
            yield conn

    def now(self) -> float:
        with self._tx() as conn:
            return float(conn.execute(sa.select(self._now)).scalar_one())

    # -- discovery -----------------------------------------------------------------------------

    def known_files(self, pipeline: str) -> dict[str, KnownFile]:
        """Newest version of every path of a pipeline, for the watcher's change check."""
        query = (
            sa.select(jobs.c.relative_path, jobs.c.relative_path_raw, jobs.c.sha256,
                      jobs.c.size, jobs.c.mtime_ns)
            .where(jobs.c.pipeline == pipeline)
            .order_by(jobs.c.id)
        )  # fmt: skip
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return {
            _fs_path(row.relative_path, row.relative_path_raw): KnownFile(
                row.sha256, row.size, row.mtime_ns
            )
            for row in rows
        }

    def enqueue(
        self, pipeline: str, relative_path: str, sha256: str, size: int, mtime_ns: int
    ) -> int | None:
        """Insert a queued job unless this content at this path is known; return the new id.

        A known version gets its size and mtime refreshed so the next scan skips it cheaply.
        """
        path, raw = _db_path(relative_path)
        key = (
            (jobs.c.pipeline == pipeline)
            & (jobs.c.relative_path == path)
            & (jobs.c.sha256 == sha256)
        )
        with self._tx() as conn:
            known = conn.execute(sa.update(jobs).where(key).values(size=size, mtime_ns=mtime_ns))
            if known.rowcount:
                return None
            values = dict(
                pipeline=pipeline, relative_path=path, relative_path_raw=raw, sha256=sha256,
                size=size, mtime_ns=mtime_ns, state=JobState.QUEUED.value,
                next_attempt_at=self._now, created_at=self._now, updated_at=self._now,
            )  # fmt: skip
            # Another instance watching the same share may insert the same document first.
            insert = self._insert(jobs).values(**values).on_conflict_do_nothing()
            row = conn.execute(insert.returning(jobs.c.id)).first()
            return int(row[0]) if row else None

    # -- upload --------------------------------------------------------------------------------

    def claim_for_upload(self, owner: str, limits: Mapping[str, int]) -> Job | None:
        """Take the next due queued job of a pipeline that has room for another execution."""
        with self._tx() as conn:
            busy: dict[str, int] = dict(
                conn.execute(
                    sa.select(jobs.c.pipeline, sa.func.count())
                    .where(jobs.c.state.in_([s.value for s in IN_FLIGHT]))
                    .group_by(jobs.c.pipeline)
                ).all()
            )
            open_pipelines = [p for p, limit in limits.items() if busy.get(p, 0) < limit]
            if not open_pipelines:
                return None
            candidate = (
                sa.select(jobs.c.id)
                .where(jobs.c.state == JobState.QUEUED.value)
                .where(jobs.c.next_attempt_at <= self._now)
                .where(jobs.c.pipeline.in_(open_pipelines))
                .order_by(jobs.c.next_attempt_at, jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            row = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == candidate)
                .values(
                    state=JobState.SUBMITTING.value,
                    attempts=jobs.c.attempts + 1,
                    lease_owner=owner,
                    lease_until=self._now + SUBMIT_LEASE_SECONDS,
                    updated_at=self._now,
                )
                .returning(*jobs.c)
            ).first()
        return _to_job(row) if row else None

    def record_submit(self, job: Job, decision: Decision, http_status: int | None) -> bool:
        """Apply what the upload worker decided; fenced on the claim. False if it was lost."""
        values: dict[str, Any] = self._decision_values(decision, http_status)
        if decision.state is JobState.SUBMITTED:
            values.update(execution_id=decision.execution_id, submitted_at=self._now, poll_count=0)
        if decision.refund_attempt:
            values["attempts"] = jobs.c.attempts - 1
        return self._fenced_update(job, JobState.SUBMITTING, values)

    def skip(self, job: Job, reason: str) -> bool:
        values = {"state": JobState.SKIPPED.value, "last_error": reason, "finished_at": self._now}
        return self._fenced_update(job, JobState.SUBMITTING, values)

    def release_interrupted_fetches(self, everything: bool = False) -> int:
        """Fetches cut off by a crash go back to polling: the status says if the result is
        still there (fetch again) or gone (submit again)."""
        stale = sa.true() if everything else jobs.c.updated_at < self._now - SUBMIT_LEASE_SECONDS
        with self._tx() as conn:
            result = conn.execute(
                sa.update(jobs)
                .where((jobs.c.state == JobState.FETCHING.value) & stale)
                .values(state=JobState.SUBMITTED.value, next_poll_at=self._now,
                        last_error="result fetch interrupted; checking the status",
                        updated_at=self._now)
            )  # fmt: skip
        return int(result.rowcount)

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

    def due_polls(self, limit: int, pipelines: list[str]) -> list[Job]:
        query = (
            sa.select(jobs)
            .where(jobs.c.state == JobState.SUBMITTED.value)
            .where(jobs.c.next_poll_at <= self._now)
            .where(jobs.c.pipeline.in_(pipelines))
            .order_by(jobs.c.next_poll_at)
            .limit(limit)
        )
        with self._tx() as conn:
            return [_to_job(row) for row in conn.execute(query).all()]

    def begin_fetch(self, job: Job) -> bool:
        """Mark that a read-once result is being fetched, before the request is sent."""
        values = {"state": JobState.FETCHING.value, "updated_at": self._now}
        return self._fenced_update(job, JobState.SUBMITTED, values)

    def record_poll(
        self,
        job: Job,
        decision: Decision,
        http_status: int | None,
        body: Any = None,
        fetching: bool = False,
    ) -> bool:
        """Apply a poll's (or a fetch's) decision. A result is stored in the same transaction."""
        values: dict[str, Any] = self._decision_values(decision, http_status)
        values["poll_count"] = jobs.c.poll_count + 1
        if body is not None:
            values["result_body"] = json.dumps(body)
        if decision.state is JobState.QUEUED:
            values["execution_id"] = None
        expected = JobState.FETCHING if fetching else JobState.SUBMITTED
        return self._fenced_update(job, expected, values)

    # -- output --------------------------------------------------------------------------------

    def claim_stored_results(self, limit: int, pipelines: list[str]) -> list[Job]:
        query = (
            sa.select(jobs)
            .where(jobs.c.state == JobState.RESULT_STORED.value)
            .where(jobs.c.pipeline.in_(pipelines))
            .order_by(jobs.c.id)
            .limit(limit)
        )
        with self._tx() as conn:
            return [_to_job(row) for row in conn.execute(query).all()]

    def mark_finished(self, job: Job) -> bool:
        state = JobState.DONE if job.outcome == "success" else JobState.FAILED
        values = {"state": state.value, "finished_at": self._now, "lease_owner": None}
        return self._fenced_update(job, JobState.RESULT_STORED, values)

    # -- recovery and counts -------------------------------------------------------------------

    def release_stale_claims(self, everything: bool = False, hold: Sequence[str] = ()) -> int:
        """Put back jobs whose upload was interrupted (lease expired, or all at a lone start).

        Such a POST may have reached the server. It is submitted again, the one window where
        a document can be executed twice, unless its pipeline is in `hold`: then it waits for
        an operator (README, "What happens when...").
        """
        stale = sa.true() if everything else jobs.c.lease_until < self._now
        held = jobs.c.pipeline.in_(list(hold))
        interrupted = (jobs.c.state == JobState.SUBMITTING.value) & stale
        with self._tx() as conn:
            resubmitted = conn.execute(
                sa.update(jobs)
                .where(interrupted & ~held)
                .values(
                    state=JobState.QUEUED.value,
                    next_attempt_at=self._now,
                    last_error="upload interrupted; outcome unknown, submitting again",
                    lease_owner=None,
                    lease_until=None,
                    updated_at=self._now,
                )
            ).rowcount
            kept = conn.execute(
                sa.update(jobs)
                .where(interrupted & held)
                .values(
                    state=JobState.HELD.value,
                    last_error="upload interrupted; outcome unknown, held for an operator",
                    lease_owner=None,
                    lease_until=None,
                    updated_at=self._now,
                )
            ).rowcount
        return int(resubmitted) + int(kept)

    def unfinished_count(self, pipelines: list[str]) -> int:
        query = (
            sa.select(sa.func.count())
            .where(jobs.c.state.in_([s.value for s in UNFINISHED]))
            .where(jobs.c.pipeline.in_(pipelines))
        )
        with self._tx() as conn:
            return int(conn.execute(query).scalar_one())

    def counts_by_state(self) -> dict[tuple[str, str], int]:
        query = sa.select(jobs.c.pipeline, jobs.c.state, sa.func.count()).group_by(
            jobs.c.pipeline, jobs.c.state
        )
        with self._tx() as conn:
            return {(row[0], row[1]): int(row[2]) for row in conn.execute(query).all()}

    def list_jobs(self, pipeline: str | None = None) -> list[Job]:
        query = sa.select(jobs).order_by(jobs.c.id)
        if pipeline is not None:
            query = query.where(jobs.c.pipeline == pipeline)
        with self._tx() as conn:
            return [_to_job(row) for row in conn.execute(query).all()]

    # -- helpers -------------------------------------------------------------------------------

    def _decision_values(self, decision: Decision, http_status: int | None) -> dict[str, Any]:
        values: dict[str, Any] = {
            "state": decision.state.value,
            "last_error": decision.error,
            "last_http_status": http_status,
            "updated_at": self._now,
        }
        if decision.state in (JobState.QUEUED, JobState.HELD):
            values.update(
                next_attempt_at=self._now + decision.delay_seconds,
                lease_owner=None,
                lease_until=None,
            )
        elif decision.state is JobState.SUBMITTED:
            values.update(next_poll_at=self._now + decision.delay_seconds, lease_until=None)
        elif decision.state is JobState.RESULT_STORED:
            values.update(outcome=decision.outcome, lease_until=None)
        return values

    def _fenced_update(self, job: Job, expected: JobState, values: dict[str, Any]) -> bool:
        """Update only if the row is still in `expected` state at the same attempt."""
        with self._tx() as conn:
            result = conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job.id)
                .where(jobs.c.state == expected.value)
                .where(jobs.c.attempts == job.attempts)
                .values(**values)
            )
        return bool(result.rowcount)


def _to_job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    return Job(
        id=m["id"], pipeline=m["pipeline"],
        relative_path=_fs_path(m["relative_path"], m["relative_path_raw"]),
        sha256=m["sha256"], size=m["size"], mtime_ns=m["mtime_ns"], state=JobState(m["state"]),
        attempts=m["attempts"], execution_id=m["execution_id"], poll_count=m["poll_count"],
        outcome=m["outcome"],
        result_body=json.loads(m["result_body"]) if m["result_body"] else None,
        last_http_status=m["last_http_status"], last_error=m["last_error"],
        lease_owner=m["lease_owner"], created_at=m["created_at"],
        submitted_at=m["submitted_at"], updated_at=m["updated_at"],
    )  # fmt: skip


def _db_path(relative_path: str) -> tuple[str, bytes | None]:
    """A path as the database keeps it: valid UTF-8 text, plus the raw bytes if it was not.

    File names are bytes on Linux; a name that is not UTF-8 reaches us with surrogate escapes,
    which neither SQLite nor PostgreSQL text can hold.
    """
    text = as_text(relative_path)
    return text, (os.fsencode(relative_path) if text != relative_path else None)


def _fs_path(text: str, raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="surrogateescape") if raw is not None else text


def _create_engine(url: str, busy_timeout_seconds: float) -> Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
        # FULL: a result that the API hands out once must survive a power cut once committed.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
