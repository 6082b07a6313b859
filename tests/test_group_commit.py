"""SQLite's writers share transactions (watcher/store/group_commit.py), on a real database file:
each write is committed before it returns, a failing writer undoes only its own changes, and a
failed COMMIT fails every writer whose changes it held."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.store.database import Database

WRITERS = 6


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    opened = Database(f"sqlite:///{tmp_path / 'state.db'}", busy_timeout_seconds=5)
    with opened.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE row (name TEXT PRIMARY KEY, parent INTEGER"
            " REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
    yield opened
    opened.close()


def committed_names(db: Database) -> set[str]:
    """What another process would read: a connection of its own, outside the engine."""
    plain = sqlite3.connect(db.sqlite_file())
    try:
        return {name for (name,) in plain.execute("SELECT name FROM row")}
    finally:
        plain.close()


def insert(conn: Connection, name: str, parent: int | None = None) -> None:
    conn.execute(sa.text("INSERT INTO row VALUES (:n, :p)"), {"n": name, "p": parent})


def commits_of(db: Database) -> list[int]:
    counted = [0]

    @sa.event.listens_for(db.engine, "commit")
    def _count(_conn: Connection) -> None:
        counted[0] += 1

    return counted


def run_grouped(db: Database, bodies: list[Callable[[Connection], None]]) -> list[BaseException]:
    """The first body runs while every other writer has started its write and waits; each
    writer then checks its row from outside as soon as its write returned."""
    started = [threading.Event() for _ in bodies[1:]]
    errors: list[BaseException] = []
    seen_after_return: list[bool] = []

    def first(conn: Connection) -> None:
        for event in started:
            assert event.wait(10)
        time.sleep(0.2)  # not a proof of anything: lets the others reach the lock
        bodies[0](conn)

    def writer(index: int, body: Callable[[Connection], None]) -> None:
        if index:
            started[index - 1].set()
        try:
            with db.write() as conn:
                body(conn)
        except BaseException as exc:
            errors.append(exc)
            return
        seen_after_return.append(f"w{index}" in committed_names(db))

    threads = [
        threading.Thread(target=writer, args=(i, first if i == 0 else body))
        for i, body in enumerate(bodies)
    ]
    threads[0].start()
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(seen_after_return), "a write returned before its changes were committed"
    return errors


def test_waiting_writers_share_one_commit_and_each_is_committed_when_it_returns(
    db: Database,
) -> None:
    commits = commits_of(db)
    bodies = [lambda conn, i=i: insert(conn, f"w{i}") for i in range(WRITERS)]

    assert run_grouped(db, bodies) == []

    assert committed_names(db) == {f"w{i}" for i in range(WRITERS)}
    assert commits[0] < WRITERS


def test_a_failing_writer_undoes_only_its_own_changes(db: Database) -> None:
    def failing(conn: Connection) -> None:
        insert(conn, "w2")
        raise ValueError("this writer changed its mind")

    bodies: list[Callable[[Connection], None]] = [
        lambda conn, i=i: insert(conn, f"w{i}") for i in range(WRITERS)
    ]
    bodies[2] = failing

    errors = run_grouped(db, bodies)

    assert [str(e) for e in errors] == ["this writer changed its mind"]
    assert committed_names(db) == {f"w{i}" for i in range(WRITERS) if i != 2}


def test_a_failed_commit_fails_every_writer_of_the_group_and_the_next_write_works(
    db: Database,
) -> None:
    bodies: list[Callable[[Connection], None]] = [
        lambda conn, i=i: insert(conn, f"w{i}") for i in range(WRITERS)
    ]
    bodies[3] = lambda conn: insert(conn, "w3", parent=42)  # no such parent: COMMIT fails

    errors = run_grouped(db, bodies)

    assert len(errors) == WRITERS
    assert all(isinstance(e, sa.exc.IntegrityError) for e in errors)
    assert committed_names(db) == set()
    with db.write() as conn:
        insert(conn, "after")
    assert committed_names(db) == {"after"}
