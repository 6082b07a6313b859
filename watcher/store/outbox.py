"""The notice outbox's queries. A notice is added in the transaction of the state change it
reports (a document finished, a pipeline paused), so a crash loses neither or keeps both;
senders claim due notices with a lease (several instances never send one twice at once), and
a notice the receiver accepted is deleted."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.notices import Draft, Notice
from watcher.store.database import Database
from watcher.store.schema import metadata


class Store(Protocol):
    """What the outbox needs of the store, which imports this module: it adds notices in
    the transactions of its own changes."""

    @property
    def db(self) -> Database: ...


outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Double, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Double, nullable=False),
)


def add_notices(conn: Connection, drafts: Iterable[Draft], now: Any) -> None:
    """Inside the caller's transaction: the notices of the change it is making."""
    rows = [
        {
            "event": d.event,
            "pipeline": d.pipeline,
            "created_at": now,
            "next_attempt_at": now,
            "payload": json.dumps(d.payload, ensure_ascii=False),
        }
        for d in drafts
    ]
    if rows:
        conn.execute(sa.insert(outbox), rows)


def claim_due_notices(store: Store, limit: int, lease_seconds: float) -> list[Notice]:
    """Take the oldest due notices; their next attempt moves a lease ahead, so that another
    sender leaves them alone until this one has said how it went (or died)."""
    due = (
        sa.select(outbox.c.id)
        .where(outbox.c.next_attempt_at <= store.db.now)
        .order_by(outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claim = (
        sa.update(outbox)
        .where(outbox.c.id.in_(due.scalar_subquery()))
        .values(next_attempt_at=store.db.now + lease_seconds)
        .returning(*outbox.c)
    )
    with store.db.write() as conn:
        rows = conn.execute(claim).all()
    return sorted((_notice(row) for row in rows), key=lambda notice: notice.id)


def _notice(row: sa.Row[Any]) -> Notice:
    return Notice(
        id=row.id,
        event=row.event,
        pipeline=row.pipeline,
        payload=json.loads(row.payload),
        attempts=row.attempts,
        created_at=row.created_at,
    )


def notice_sent(store: Store, notice: Notice) -> None:
    with store.db.write() as conn:
        conn.execute(sa.delete(outbox).where(outbox.c.id == notice.id))


def notice_failed(store: Store, notice: Notice, delay_seconds: float, error: str) -> None:
    """The receiver did not take it: try again after `delay_seconds`."""
    query = (
        sa.update(outbox)
        .where(outbox.c.id == notice.id)
        .values(
            attempts=outbox.c.attempts + 1,
            last_error=error[:500],
            next_attempt_at=store.db.now + delay_seconds,
        )
    )
    with store.db.write() as conn:
        conn.execute(query)


def postpone_notices(store: Store, notices: Sequence[Notice], delay_seconds: float) -> None:
    """Claimed but not tried (the receiver is down, or we stop): due again after the delay."""
    if not notices:
        return
    query = (
        sa.update(outbox)
        .where(outbox.c.id.in_([n.id for n in notices]))
        .values(next_attempt_at=store.db.now + delay_seconds)
    )
    with store.db.write() as conn:
        conn.execute(query)


def release_earlier_claims(store: Store) -> None:
    """At a sender's start, notices claimed by an earlier life are due again at once (killed
    between a claim and its answers, they would wait out the claim's lease). On SQLite one
    daemon uses the file, so every notice not yet due was claimed by a process now dead or
    waits out a failure, which then gets one early try. On PostgreSQL another instance may
    hold the claim: there the lease runs out."""
    if not store.db.is_sqlite:
        return
    query = (
        sa.update(outbox)
        .where(outbox.c.next_attempt_at > store.db.now)
        .values(next_attempt_at=store.db.now)
    )
    with store.db.write() as conn:
        conn.execute(query)


def next_notice_due_in(store: Store) -> float | None:
    """Seconds until the next notice is due (<= 0: now); None: the outbox is empty."""
    with store.db.read() as conn:
        first = conn.execute(sa.select(sa.func.min(outbox.c.next_attempt_at) - store.db.now))
        value = first.scalar_one()
    return None if value is None else float(value)


def pending_notices(store: Store) -> list[Notice]:
    """Every notice still to send, oldest first (for tests and operators)."""
    with store.db.read() as conn:
        rows = conn.execute(sa.select(outbox).order_by(outbox.c.id)).all()
    return [_notice(row) for row in rows]
