"""The job table's schema, how rows become `Job`s, and the engine set-up per database.

SQLite (default) runs in WAL mode with a busy timeout, and every transaction starts with
`BEGIN IMMEDIATE` so a reader never has to upgrade its lock mid-transaction (the
SQLITE_BUSY_SNAPSHOT trap, reliability-notes B8).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from watcher.filters import as_text
from watcher.jobs import Job, JobState, ResultFile
from watcher.store.driver import Prepared

metadata = sa.MetaData()
# The newest migration (migrations/versions/): a database already there is not handed to alembic,
# which would stay imported for the daemon's life (about 8 MiB) and slow every start.
SCHEMA_HEAD = "0010"
# Connections kept; with the overflow, enough for 64 upload and 64 poll workers and the other
# loops (connections are opened only when needed).
POOL_SIZE = 32
POOL_OVERFLOW = 128

BEGIN_READ = Prepared(lambda _: sa.text("BEGIN"))
BEGIN_WRITE = Prepared(lambda _: sa.text("BEGIN IMMEDIATE"))

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
    sa.Column("execution_id", sa.Text),  # opaque: a whisper_hash has no length limit
    sa.Column("poll_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_poll_at", sa.Double),
    sa.Column("outcome", sa.String(16)),
    sa.Column("last_http_status", sa.Integer),
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_until", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("submitted_at", sa.Double),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
    # The first job's id for every job of a claim that packed several into one execution.
    sa.Column("pack_id", sa.Integer),
    # Its packed execution ended without its own answer: the next upload sends it alone.
    sa.Column("alone", sa.Boolean, nullable=False, server_default=sa.false()),
    # When the stored answer was dropped (`keep_results_days` after the result file was
    # written), and the cost it reported, kept for `report`.
    sa.Column("answer_dropped_at", sa.Double),
    sa.Column("cost_in_dollars", sa.Double),
    # The order of the contents this path has held: the highest is its current content
    # (an earlier content that comes back takes a new, highest one). See ResultFile.
    sa.Column("version", sa.Integer),
    sa.Column("result_file", sa.String(16)),  # where its result file is (ResultFile)
    sa.UniqueConstraint("pipeline", "relative_path", "sha256", name="uq_jobs_document"),
)
sa.Index("ix_jobs_state_due", jobs.c.state, jobs.c.next_attempt_at)
sa.Index("ix_jobs_poll_due", jobs.c.state, jobs.c.next_poll_at)
# Lookups by path (pipeline, relative_path) use the unique index's first two columns: the
# separate index on them (until migration 0010) cost about 46 B per processed document.

# The terminal answer a job's poll stored (read once from the API), in a table of its own:
# when it expires its row is deleted whole, so its pages become free and go back to the disk
# (SQLite's incremental auto-vacuum) or to the table's free space (PostgreSQL's autovacuum),
# where an answer set to NULL inside the job row would leave its space in the row's page.
answers = sa.Table(
    "answers",
    metadata,
    sa.Column("job_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("body", sa.Text, nullable=False),
    # When it was stored (never after its job's finished_at): expiry walks them oldest first.
    sa.Column("stored_at", sa.Double, nullable=False),
)
sa.Index("ix_answers_stored", answers.c.stored_at)
# A job's answer (NULL: none kept), for the jobs a query or a RETURNING clause hands back.
ANSWER_BODY = (
    sa.select(answers.c.body)
    .where(answers.c.job_id == jobs.c.id)
    .correlate(jobs)
    .scalar_subquery()
    .label("result_body")
)
ANSWER_KEPT = sa.exists().where(answers.c.job_id == jobs.c.id).correlate(jobs)
# Every column of a job row, with its answer: what `to_job` reads.
JOB_COLUMNS = (*jobs.c, ANSWER_BODY)

# What `unstract-watcher status` shows of a pipeline that the daemon keeps in memory, and what
# the daemon learnt of it that is worth keeping for its next start.
pipeline_state = sa.Table(
    "pipeline_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("paused_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("updated_at", sa.Double, nullable=False),
    # How long its executions typically take, as the daemon last learnt it (see Estimate):
    # the next start polls its first executions at that time instead of at growing gaps.
    sa.Column("execution_seconds", sa.Double),
)

# Terminal answers kept by execution id, written even when the job's row was taken over by
# another instance meanwhile: a result that the API hands out once is never thrown away.
results = sa.Table(
    "results",
    metadata,
    sa.Column("execution_id", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    # NULL while the job row holds the answer (one copy): set only when the job had been
    # taken over, so the instance that holds it now finds the answer here.
    sa.Column("body", sa.Text),
    sa.Column("created_at", sa.Double, nullable=False),
)
sa.Index("ix_results_job", results.c.job_id)


# Columns a Job takes as they are; `to_job` converts the others.
PLAIN_COLUMNS = tuple(
    "id pipeline sha256 size mtime_ns attempts execution_id poll_count outcome last_http_status "
    "last_error lease_owner created_at submitted_at updated_at finished_at pack_id "
    "answer_dropped_at cost_in_dollars version".split()
)


def to_job(row: sa.Row[Any]) -> Job:
    return job_from(dict(row._mapping))


def job_from(m: Mapping[str, Any]) -> Job:
    """A `Job` from a row's columns by name."""
    body = m["result_body"]
    return Job(
        **{name: m[name] for name in PLAIN_COLUMNS},
        relative_path=fs_path(m["relative_path"], m["relative_path_raw"]),
        state=JobState(m["state"]),
        alone=bool(m["alone"]),
        result_file=ResultFile(m["result_file"]) if m["result_file"] else None,
        result_body=json.loads(body) if body else None,
    )


def db_path(relative_path: str) -> tuple[str, bytes | None]:
    """A path as the database keeps it: valid UTF-8 text, plus the raw bytes if it was not.

    File names are bytes on Linux; a name that is not UTF-8 reaches us with surrogate escapes,
    which neither SQLite nor PostgreSQL text can hold.
    """
    text = as_text(relative_path)
    return text, (os.fsencode(relative_path) if text != relative_path else None)


def fs_path(text: str, raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="surrogateescape") if raw is not None else text


def create_engine(url: str, busy_timeout_seconds: float) -> Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(
            url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW
        )
    # One pooled connection per thread that may use it at once (upload and poll workers, the
    # finisher, discovery, operator reads): a connection past the pool is closed when given
    # back, and a new one costs a connect and its PRAGMAs.
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False},
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # First: the pragmas below may wait for another process's lock.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
        # A new file, before its first table: expired answers' pages can then be given back
        # to the file system without a VACUUM (existing files: migration 0006). Only then:
        # on a file in use the pragma waits for the write lock.
        if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a result that the API hands out once must survive a power cut once committed.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get("read_only", False)
        # On the driver's cursor, as a `Prepared` statement: "database is locked" arrives as
        # SQLAlchemy's OperationalError, which the store retries.
        (BEGIN_READ if read_only else BEGIN_WRITE).run(connection, {})

    return engine


def upsert_builder(dialect_name: str) -> Any:
    """The dialect's `insert` with ON CONFLICT. PostgreSQL's is imported only when used: on
    SQLite its dialect would cost the daemon about 3 MiB of memory for nothing."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def json_type() -> sa.types.TypeEngine[Any]:
    """JSON, stored as JSONB on PostgreSQL (whose dialect is imported only when used)."""
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.JSON().with_variant(JSONB(), "postgresql")
