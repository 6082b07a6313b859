"""Finished documents, streamed a batch at a time (for `export`): a million rows never sit in
memory, and no read transaction stays open for long (a long one would hold back SQLite's WAL
checkpoints while the daemon writes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from watcher.jobs import Job
from watcher.store.schema import jobs, to_job
from watcher.store.store import Store

BATCH = 1000


def finished_jobs(
    store: Store,
    states: Sequence[str],
    pipeline: str | None = None,
    finished_since: float | None = None,
    batch: int = BATCH,
) -> Iterator[Job]:
    """Jobs in `states` (done, failed), oldest id first, without their stored answer (the
    result files hold what `export` reads)."""
    query: sa.Select[Any] = sa.select(*jobs.c, sa.null().label("result_body"))
    query = query.where(jobs.c.state.in_(states))
    if pipeline is not None:
        query = query.where(jobs.c.pipeline == pipeline)
    if finished_since is not None:
        query = query.where(jobs.c.finished_at >= finished_since)
    query = query.order_by(jobs.c.id).limit(batch)
    last = 0
    while True:
        with store.db.read() as conn:
            rows = conn.execute(query.where(jobs.c.id > last)).all()
        yield from (to_job(row) for row in rows)
        if len(rows) < batch:
            return
        last = rows[-1].id
