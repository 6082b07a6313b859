"""Whether a daemon holds the database now, for `status`; read-only, never blocks a daemon.

SQLite: a daemon (`run`, `run --once`) holds an exclusive lock on `<database>.lock` for its
lifetime (`Store.lock_for_daemon`); a shared lock that cannot be had proves one is there.
PostgreSQL: each daemon keeps a session named `unstract-watcher ...` that holds its instance
lock (`instance_lock.session_name`); those sessions connected to this database are counted.
"""

from __future__ import annotations

import fcntl
import os

import sqlalchemy as sa

from watcher.store.instance_lock import PREFIX
from watcher.store.operator import reading
from watcher.store.store import Store


def daemons_now(store: Store) -> int:
    """How many daemons hold this database now (SQLite: 0 or 1)."""
    if store.sole_writer:
        return int(_sqlite_lock_held(store.db.sqlite_file()))
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE :named AND pid <> pg_backend_pid()"
    )
    with reading(store) as conn:
        return int(conn.execute(query, {"named": f"{PREFIX} %"}).scalar_one())


def _sqlite_lock_held(database: str) -> bool:
    try:
        fd = os.open(f"{database}.lock", os.O_RDONLY)  # never created here
    except OSError:
        return False  # no daemon ever ran here, or none can have (no such folder)
    try:
        # Held for a moment only: a daemon starting in that very moment would be refused.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock if we got it
    return False
