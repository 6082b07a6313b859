"""PostgreSQL: each instance id runs once. Two daemons with one id would release and renew
each other's leases, so the second is refused.

The lock is a session-level advisory lock on a connection held for the daemon's lifetime.
The session is named after this host, boot and process: after a crash the server may keep a
dead session (and its lock) until TCP keepalive gives up, which after a power cut takes
hours; a holder that is provably our own earlier life (same host, and an earlier boot or a
process that no longer exists) is ended instead of blocking the restart.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

PREFIX = "unstract-watcher"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
TERMINATE_WAIT_SECONDS = 5.0  # for a terminated backend to exit and free the lock


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def session_name(pid: int | None = None) -> str:
    """`unstract-watcher HOST BOOT PID` (hashed, within PostgreSQL's 63-byte limit)."""
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        boot = "unknown"
    return f"{PREFIX} {_short(socket.gethostname())} {_short(boot)} {pid or os.getpid()}"


def is_dead_earlier_life(holder: str, ours: str) -> bool:
    """Pure: the holder's session name says it is this host's, from an earlier boot or a
    process that is gone. Another host's instance is never taken for dead."""
    theirs, mine = holder.split(" "), ours.split(" ")
    if len(theirs) != 4 or theirs[0] != PREFIX or theirs[1] != mine[1]:
        return False
    if theirs[2] != mine[2]:
        return True  # this host has rebooted since
    return theirs[3].isdigit() and not _alive(int(theirs[3]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_instance(engine: Engine, owner: str) -> Connection | None:
    """Take the lock of this instance id; the connection holding it, or None if a live
    instance holds it."""
    conn = engine.connect()
    conn.execute(sa.select(sa.func.set_config("application_name", session_name(), False)))
    schema = conn.execute(sa.select(sa.func.current_schema())).scalar_one()
    digest = hashlib.sha256(f"{schema}\0{owner}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    if not _try(conn, key) and not (_end_dead_holder(conn, key) and _try(conn, key)):
        conn.close()
        return None
    return conn


def _try(conn: Connection, key: int) -> bool:
    locked = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one())
    conn.commit()  # the lock outlives the transaction: no transaction is left open
    return locked


def _end_dead_holder(conn: Connection, key: int) -> bool:
    """End the session holding the lock if it is our own dead earlier life."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    holders = conn.execute(
        sa.text(
            "SELECT a.pid, a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = :high AND l.objid = :low"
        ),
        {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF},
    ).all()
    ours = session_name()
    dead = [pid for pid, name in holders if is_dead_earlier_life(name or "", ours)]
    ended = [
        pid for pid in dead if conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar()
    ]
    conn.commit()
    # pg_terminate_backend only signals: the lock is free once that backend has exited.
    deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
    while ended and _running(conn, ended) and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(ended)


def _running(conn: Connection, pids: list[int]) -> bool:
    found = conn.execute(
        sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid IN :pids").bindparams(
            sa.bindparam("pids", expanding=True)
        ),
        {"pids": pids},
    ).scalar_one()
    conn.commit()
    return bool(found)
