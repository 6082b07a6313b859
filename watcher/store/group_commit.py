"""SQLite's writers, committed together: one transaction, one fsync, for several threads.

SQLite has one writer at a time, and with `synchronous=FULL` each COMMIT is an fsync of the
WAL: a transaction per state change per document made that fsync (and the BEGIN, the COMMIT
and the connection checkout around it) the largest cost of a document. Here every write of
the process runs on one connection, each writer in a savepoint of the transaction that is
open. A writer that finishes while others wait for the lock leaves the transaction open for
them; the last one in line (or the one that fills the group) commits it. Nobody returns
before the COMMIT that holds its changes: what a write records is durable before the step
that depends on it, as with a transaction of its own.

A writer's failure rolls back its savepoint only. A failed COMMIT fails every writer of the
group with the same error (they retry, as after a failed transaction of their own).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

# Writers per transaction at most: bounds how long the first one waits for its commit.
MAX_GROUP = 32


@dataclass
class Group:
    """The writers whose changes the open transaction holds."""

    writers: int = 0
    committed: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def end(self, error: BaseException | None) -> None:
        self.error = error
        self.committed.set()


class GroupCommit:
    def __init__(self, engine: Engine, max_group: int = MAX_GROUP) -> None:
        self._engine = engine
        self._max_group = max_group
        self._lock = threading.Lock()  # held by one writer at a time: while its body runs
        self._counting = threading.Lock()
        self._waiting = 0  # writers blocked on `_lock`
        self._conn: Connection | None = None  # the open transaction's, from the engine's pool
        self._group: Group | None = None  # the open transaction's writers

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write, in the open transaction; returns once that is committed."""
        joined: Group | None = None
        self._acquire()
        try:
            group, conn = self._begin()
            # Only a transaction that holds others' changes needs a savepoint to undo ours.
            with self._undone_on_error(conn, savepoint=group.writers > 0):
                yield conn
            group.writers += 1
            joined = group
        finally:
            try:
                self._commit_if_last()
            finally:
                self._lock.release()
        joined.committed.wait()
        if joined.error is not None:
            raise joined.error

    @contextmanager
    def _undone_on_error(self, conn: Connection, savepoint: bool) -> Iterator[None]:
        # Savepoints through the driver: they are plain SQL inside SQLAlchemy's transaction,
        # and its statement machinery would cost more than SQLite's work for them.
        driver = conn.connection.driver_connection
        assert driver is not None
        if savepoint:
            driver.execute("SAVEPOINT w")
        try:
            yield
        except BaseException as exc:
            try:
                if not savepoint:
                    raise
                driver.execute("ROLLBACK TO w")
                driver.execute("RELEASE w")
            except BaseException:
                # Ours alone, or broken: the transaction goes, with every writer of it.
                self._end(exc)
            raise
        if savepoint:
            driver.execute("RELEASE w")

    @contextmanager
    def alone(self) -> Iterator[Connection]:
        """The write connection with no transaction open (for pragmas that need none)."""
        self._acquire()
        try:
            self._commit()
            with self._engine.connect() as conn:
                yield conn
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._commit()

    def _acquire(self) -> None:
        with self._counting:
            self._waiting += 1
        self._lock.acquire()
        with self._counting:
            self._waiting -= 1

    def _begin(self) -> tuple[Group, Connection]:
        """The open transaction, begun if there is none."""
        if self._group is None or self._conn is None:
            conn = self._engine.connect()
            try:
                conn.begin()  # BEGIN IMMEDIATE (schema.create_engine): may wait for a process
            except BaseException:
                conn.invalidate()
                raise
            self._group, self._conn = Group(), conn
        return self._group, self._conn

    def _commit_if_last(self) -> None:
        group = self._group
        if group is None:
            return
        with self._counting:
            others_wait = self._waiting > 0
        if not others_wait or group.writers >= self._max_group:
            self._commit()

    def _commit(self) -> None:
        """Commit the open transaction (if any) and tell its writers; never raises."""
        if self._group is None or self._conn is None:
            return
        try:
            self._conn.commit()
        except BaseException as exc:
            self._end(exc)
            return
        group, self._group = self._group, None
        conn, self._conn = self._conn, None
        # Back to the pool between transactions: the engine's dispose() closes it, and the
        # last connection to close checkpoints the WAL, as without groups.
        try:
            conn.close()
        except BaseException:  # committed all the same
            conn.invalidate()
        group.end(None)

    def _end(self, error: BaseException) -> None:
        """The open transaction failed: roll it back and fail its writers."""
        group, self._group = self._group, None
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.rollback()
                conn.close()
            except BaseException:  # a broken connection is dropped either way
                conn.invalidate()
        if group is not None:
            group.end(error)
