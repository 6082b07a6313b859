"""The database under the store: engine, dialect, transactions, clock and waits.

With SQLite, one lock in this process serialises transactions (each a `BEGIN IMMEDIATE`).
With PostgreSQL, several instances share the table. Only this module and the store's query
modules know which database they are on.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.crashpoints import answer_lost
from watcher.jobs import Job
from watcher.logs import get_logger
from watcher.store.changes import ChangeCounter
from watcher.store.errors import TRANSIENT_DB_ERRORS, db_error_text
from watcher.store.group_commit import GroupCommit
from watcher.store.held import HeldClaims
from watcher.store.schema import create_engine, upsert_builder

TRANSIENT_RETRIES = 8  # about half a minute of backoff
CLOCK_RESYNC_SECONDS = 60.0
# SQLite's clock counts whole milliseconds (rounded down): our reading of it is kept that much
# behind, so a time we write as "now" is never later than the database's now (a job made due
# now is due for the very next claim).
DB_CLOCK_STEP_SECONDS = 0.001
SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
POSTGRESQL_NOW = "extract(epoch from clock_timestamp())::float8"
P = ParamSpec("P")
T = TypeVar("T")
log = get_logger()


class Database:
    """One database: its engine, its dialect's SQL, and the claims this process holds."""

    def __init__(self, url: str, busy_timeout_seconds: float) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite and (path := self.sqlite_file()):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, busy_timeout_seconds)
        # SQLite: one writer at a time, so this process's writers share transactions.
        self._group = GroupCommit(self.engine) if self.is_sqlite else None
        self.insert = upsert_builder("sqlite" if self.is_sqlite else "postgresql")
        # The database's clock (epoch seconds), as an SQL expression.
        self.now = sa.literal_column(SQLITE_NOW if self.is_sqlite else POSTGRESQL_NOW, sa.Double)
        self.held = HeldClaims()
        self._stop = threading.Event()
        path = self.sqlite_file()
        self.changes = ChangeCounter(path) if path else None  # SQLite: did anyone commit?

    def sqlite_file(self) -> str:
        """The SQLite database's file ('' for PostgreSQL or an in-memory database)."""
        database = sa.engine.make_url(self.url).database if self.is_sqlite else ""
        return "" if not database or database == ":memory:" else database

    def stop_waits_on(self, stop: threading.Event) -> None:
        """Retry and outage waits end when `stop` is set (the daemon is stopping)."""
        self._stop = stop

    def wait(self, seconds: float) -> bool:
        """Wait before trying again; False if the daemon stops meanwhile."""
        return not self._stop.wait(seconds)

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        if self.changes is not None:
            self.changes.close()
        self.engine.dispose()

    def change_mark(self) -> int | None:
        """Differs from the last one whenever a commit came in between; None: cannot tell."""
        return None if self.changes is None else self.changes.version()

    @contextmanager
    def write(self, lose_answer_at: str = "", ending: Iterable[Job] = ()) -> Iterator[Connection]:
        """A write transaction; the claims of `ending` are let go just before its commit,
        while their rows are still locked by it. If it fails, they are held again: the
        caller may try once more, and until it gives up they are its own."""
        ending = list(ending)
        try:
            with self._transaction() as conn:
                yield conn
                self.held.drop(job.id for job in ending)  # ended by this commit
            if lose_answer_at and answer_lost(lose_answer_at):
                raise sa.exc.OperationalError(
                    "COMMIT", None, ConnectionError("connection lost after the commit")
                )
        except BaseException as exc:
            self.held.take(job.id for job in ending)
            if isinstance(exc, TRANSIENT_DB_ERRORS):
                # The commit may have gone through: a lease of ours may be held by no loop.
                self.held.doubt()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self._group is not None:
            with self._group.write() as conn:
                yield conn
            return
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def give_back_space(self, pages: int) -> None:
        """SQLite: return up to `pages` free pages to the file system (incremental
        auto-vacuum), in a transaction of its own."""
        assert self._group is not None
        with self._group.alone() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            # A script runs the pragma to its end; one plain step frees a single page.
            driver.executescript(f"PRAGMA incremental_vacuum({int(pages)})")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: no write lock (WAL readers never wait for the writer)."""
        with self.engine.connect() as conn:
            conn.execution_options(read_only=True)
            with conn.begin():
                yield conn

    def claim(
        self, point: str, claim: Callable[[Connection], list[Job]], ending: Iterable[Job] = ()
    ) -> list[Job]:
        """Run a claim. Its jobs are held (renewed) from before the commit; if the commit's
        answer is lost, they are noted as never handed out, for `release_orphans`."""
        found: list[Job] = []
        try:
            with self.write(lose_answer_at=point, ending=ending) as conn:
                found = claim(conn)
                self.held.take(job.id for job in found)
        except BaseException:
            self.held.never_handed_out(job.id for job in found)
            raise
        return found

    def let_go(self, claimed: Iterable[Job]) -> None:
        """No loop will record these claimed jobs: their leases are no longer renewed, and
        `release_orphans` gives them back."""
        if self.held.drop(job.id for job in claimed):
            self.held.doubt()


class HasDatabase(Protocol):
    @property
    def db(self) -> Database: ...


S = TypeVar("S", bound=HasDatabase)


def retry_transient(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Retry a write on a transient database error (lost connection, failover, a lock held
    past busy_timeout), so an execution id or a read-once result in hand is not dropped.
    A retry after a commit whose answer was lost meets the fence and changes nothing.
    A daemon that stops ends the waits: the last error is raised."""

    @functools.wraps(method)
    def retried(owner: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        delay = 0.5
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return method(owner, *args, **kwargs)
            except TRANSIENT_DB_ERRORS as exc:
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
                error = db_error_text(exc)
                log.warning("database error; retrying", error=error, retry_in_seconds=delay)
                if not owner.db.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    return retried


class Clock:
    """The database's clock, read once a minute and carried on by ours in between: state
    changes take their times from it without a query of their own."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self._offset = 0.0
        self._read_at = -CLOCK_RESYNC_SECONDS

    def __call__(self) -> float:
        ours = time.monotonic()
        if ours - self._read_at >= CLOCK_RESYNC_SECONDS:
            try:
                self._offset = self._read() - time.monotonic()
            except TRANSIENT_DB_ERRORS:
                if self._read_at < 0:  # never read: nothing to carry on
                    raise
                # Carry on with the last offset: a result in hand must not wait for this.
            self._read_at = ours
        return ours + self._offset - DB_CLOCK_STEP_SECONDS

    def expire(self) -> None:
        """The next reading asks the database again."""
        self._read_at = min(self._read_at, time.monotonic() - CLOCK_RESYNC_SECONDS)
