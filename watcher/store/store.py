"""The durable job table: one `Store` object, made of one part per pipeline stage.

Its queries are named by intent and live in the part that uses them: `discovery` (known
files, enqueue), `uploads`, `polls`, `results`, `leases`; `operator`, `outbox`, `finished`
and `table_sink` take a `Store`. Rows leave as frozen `Job`s. With PostgreSQL, several
instances share the table: claims use `FOR UPDATE SKIP LOCKED` and leases, and every state
change is fenced on (state, attempt, owner). Times are epoch seconds from the database
clock, so instances on several hosts agree.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import threading
from importlib.resources import as_file, files
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from watcher.jobs import UNFINISHED, Job
from watcher.store.database import Database
from watcher.store.discovery import Discovery
from watcher.store.errors import StoreError, db_error_text, store_error
from watcher.store.expiry import Expiry
from watcher.store.instance_lock import lock_instance
from watcher.store.leases import Leases
from watcher.store.polls import Polls
from watcher.store.results import Results
from watcher.store.schema import JOB_COLUMNS, SCHEMA_HEAD, jobs, to_job
from watcher.store.uploads import Uploads
from watcher.store.writes import DEFAULT_LEASE_SECONDS

MIGRATION_LOCK_KEY = 0x5557_6D67  # PostgreSQL advisory lock: one instance migrates at a time


class Store(Discovery, Uploads, Polls, Results, Leases, Expiry):
    def __init__(
        self,
        url: str,
        busy_timeout_seconds: float = 30.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(Database(url, busy_timeout_seconds), lease_seconds)
        self._busy_timeout_seconds = busy_timeout_seconds
        if stop is not None:
            self.db.stop_waits_on(stop)
        self._lock_file: IO[str] | None = None  # SQLite: one daemon per database file
        self._instance_conn: Connection | None = None  # PostgreSQL: holds the instance lock

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def set_lease_seconds(self, seconds: float) -> None:
        """The lease of every claim from now on (the daemon's outlives its longest HTTP call)."""
        self._lease_seconds = seconds

    def stop_waits_on(self, stop: threading.Event) -> None:
        """The store's retry and outage waits end when `stop` is set; the error they were
        waiting out is raised then, as if the retries had run out."""
        self.db.stop_waits_on(stop)

    def change_mark(self) -> int | None:
        """A mark that changes with every commit by anyone (SQLite); an idle loop that saw
        it before its last look and sees it again may skip the query. None: cannot tell
        (PostgreSQL), look."""
        return self.db.change_mark()

    def upgrade(self, revision: str = "head") -> None:
        """Create or upgrade the schema to the newest alembic revision (or to `revision`)."""
        if revision == "head" and self.schema_revision() == SCHEMA_HEAD:
            return
        from alembic import command
        from alembic.config import Config

        try:
            with as_file(files("watcher._migrations")) as folder, self.db.write() as conn:
                if not self.db.is_sqlite:  # instances starting together migrate one at a time
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                config = Config()
                config.set_main_option("script_location", str(folder))
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
        except sa.exc.SQLAlchemyError as exc:
            raise store_error(exc) from None

    def upgrade_apart(self) -> None:
        """`upgrade` to the newest revision in a child process (watcher/store/migrate.py), so
        that alembic never loads into this long-lived one; nothing to do at the newest."""
        if self.schema_revision() == SCHEMA_HEAD:
            return
        ran = subprocess.run(
            [sys.executable, "-P", "-m", "watcher.store.migrate"],
            input=json.dumps([self.url, self._busy_timeout_seconds]),
            capture_output=True,
            text=True,
            check=False,
        )
        if ran.returncode != 0:  # the store's one-line reason; of a crash, its last line
            lines = ran.stderr.strip().splitlines()
            raise StoreError(lines[-1] if lines else f"schema upgrade exited {ran.returncode}")

    def schema_revision(self) -> str | None:
        """The migration the database is at; None before the first."""
        try:
            with self.db.read() as conn:
                found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # no such table yet
            return None
        return None if found is None else str(found[0])

    def lock_for_daemon(self, owner: str) -> None:
        """Refuse to run beside another daemon that would take over our claims.

        SQLite serves one daemon per file (an operator's `run --once` beside the service
        would release the service's claims). On PostgreSQL each instance id may run once:
        two with the same id would release and renew each other's leases.
        """
        if not self.db.is_sqlite:
            self._lock_instance_id(owner)
        elif database := self.db.sqlite_file():
            self._lock_sqlite_file(database)

    def _lock_sqlite_file(self, database: str) -> None:
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

    def holds_instance_lock(self) -> bool:
        """PostgreSQL: whether the session that holds our instance lock is still alive."""
        if self._instance_conn is None:
            return False
        try:
            self._instance_conn.execute(sa.select(1))
        except sa.exc.DBAPIError:
            return False
        return True

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
        if self._instance_conn is not None:
            # Closed for real, not returned to the pool: that ends the session and its lock.
            self._instance_conn.invalidate()
            self._instance_conn.close()
            self._instance_conn = None
        self.db.close()

    def unreachable_reason(self) -> str | None:
        """Why the database does not answer now (for /healthz), or None if it does."""
        try:
            self.now()
        except Exception as exc:  # any database error means unhealthy, whatever its type
            return db_error_text(exc)
        return None

    def unfinished_count(self, pipelines: list[str]) -> int:
        query = (
            sa.select(sa.func.count())
            .where(jobs.c.state.in_([s.value for s in UNFINISHED]))
            .where(jobs.c.pipeline.in_(pipelines))
        )
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def unfinished_by_state(self, pipelines: list[str] | None = None) -> dict[str, int]:
        """How many jobs wait in each unfinished state, of these pipelines or all (through
        the state index: the cost follows the work at hand, not the history)."""
        query = (
            sa.select(jobs.c.state, sa.func.count())
            .where(jobs.c.state.in_([s.value for s in UNFINISHED]))
            .group_by(jobs.c.state)
        )
        if pipelines is not None:
            query = query.where(jobs.c.pipeline.in_(pipelines))
        with self.db.read() as conn:
            return {state: int(count) for state, count in conn.execute(query).all()}

    def list_jobs(self, pipeline: str | None = None) -> list[Job]:
        """Every job (of a pipeline), oldest id first; `operator.jobs_newest_first` filters."""
        query = sa.select(*JOB_COLUMNS).order_by(jobs.c.id)
        if pipeline is not None:
            query = query.where(jobs.c.pipeline == pipeline)
        with self.db.write() as conn:
            return [to_job(row) for row in conn.execute(query).all()]
