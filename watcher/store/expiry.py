"""Expiry of stored answers: the database keeps what dedup, `status`, `jobs` and `report`
need of a finished document, and its answer only for `keep_results_days` (the result file,
durably written before the job became done or failed, holds it for good).

A batch at a time, oldest first, through an index of the rows that still hold an answer, so
a pass costs the same whatever the history. With PostgreSQL, instances skip each other's
rows (`SKIP LOCKED`); with SQLite, the freed pages go back to the disk (incremental
auto-vacuum), a few megabytes per pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from watcher.jobs import Job, JobState
from watcher.store.database import retry_transient
from watcher.store.schema import answers, jobs, results, to_job
from watcher.store.writes import StoreBase

EXPIRY_BATCH = 200
VACUUM_PAGES = 2000  # 8 MiB of 4 KiB pages a pass: the write lock is held only briefly
ENDED = (JobState.DONE.value, JobState.FAILED.value)  # their files are written

DROPPED = (
    sa.update(jobs)
    .where(jobs.c.id == sa.bindparam("b_id"))
    .values(
        answer_dropped_at=sa.bindparam("dropped_at", type_=sa.Double),
        cost_in_dollars=sa.bindparam("cost", type_=sa.Double),
    )
)


class Expiry(StoreBase):
    def drop_expired_answers(
        self,
        keep_seconds: float,
        cost_of: Callable[[Job], float | None],
        limit: int = EXPIRY_BATCH,
    ) -> int:
        """Drop the stored answers of jobs done or failed more than `keep_seconds` ago, at
        most `limit`; the cost each reported (`cost_of`) stays in its row. Returns how many
        were dropped (`limit`: more may be due)."""
        dropped = self._drop_answers(keep_seconds, cost_of, limit)
        if dropped and self.db.is_sqlite:
            self.db.give_back_space(VACUUM_PAGES)
        return dropped

    @retry_transient
    def _drop_answers(
        self, keep_seconds: float, cost_of: Callable[[Job], float | None], limit: int
    ) -> int:
        now = self.clock()
        with self.db.write() as conn:
            found = [to_job(row) for row in conn.execute(_due(now - keep_seconds, limit))]
            if not found:
                return 0
            conn.execute(DROPPED, [_dropped(job, now, cost_of) for job in found])
            ids = [job.id for job in found]
            # Whole rows: their pages are freed, not left holding a NULL's worth of row.
            conn.execute(sa.delete(answers).where(answers.c.job_id.in_(ids)))
            # Their executions' rows: kept for instances that could still be polling them,
            # which no one is once the job has ended.
            conn.execute(sa.delete(results).where(results.c.job_id.in_(ids)))
        return len(found)


def _due(cutoff: float, limit: int) -> sa.Select[Any]:
    return (
        sa.select(*jobs.c, answers.c.body.label("result_body"))
        .select_from(answers.join(jobs, jobs.c.id == answers.c.job_id))
        # Through the index on stored_at (an answer is stored before its job finishes): a
        # pass visits the answers due and those of jobs not ended yet, not the history.
        .where(answers.c.stored_at <= cutoff)
        .where(jobs.c.finished_at <= cutoff)
        # Through coalesce, so that no index on state is used: SQLite (without statistics)
        # would walk every done row of the history instead of the index of kept answers.
        .where(sa.func.coalesce(jobs.c.state, "").in_(ENDED))
        .order_by(answers.c.stored_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def _dropped(job: Job, now: float, cost_of: Callable[[Job], float | None]) -> dict[str, Any]:
    cost = job.cost_in_dollars if job.cost_in_dollars is not None else cost_of(job)
    return {"b_id": job.id, "dropped_at": now, "cost": cost}
