"""Queries for the operator's commands (status, jobs, retry, report) and the metrics.

They run against the same database as a live daemon: short transactions, and a retry only
moves a job back to `queued`, where the daemon's upload workers pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from watcher.jobs import IN_FLIGHT, Job, JobState
from watcher.store.schema import jobs, pipeline_state, to_job
from watcher.store.store import Store

RETRYABLE = (JobState.FAILED, JobState.SKIPPED, JobState.HELD)


@dataclass(frozen=True)
class PipelineSummary:
    name: str
    counts: dict[str, int]  # state -> jobs
    in_flight: int
    oldest_waiting_since: float | None  # created_at of the oldest queued job
    paused_reason: str


def list_jobs(
    store: Store,
    *,
    state: str | None = None,
    pipeline: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[Job]:
    """Jobs, newest first, filtered by state, pipeline and creation time (epoch seconds)."""
    query = sa.select(jobs).order_by(jobs.c.id.desc())
    if state is not None:
        query = query.where(jobs.c.state == state)
    if pipeline is not None:
        query = query.where(jobs.c.pipeline == pipeline)
    if since is not None:
        query = query.where(jobs.c.created_at >= since)
    if limit is not None:
        query = query.limit(limit)
    with store._tx() as conn:
        return [to_job(row) for row in conn.execute(query).all()]


def get_job(store: Store, job_id: int) -> Job | None:
    with store._tx() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
    return to_job(row) if row else None


def retry_jobs(store: Store, *, job_id: int | None = None, pipeline: str | None = None) -> int:
    """Queue one failed, skipped or held job, or every failed job of a pipeline, again with
    fresh attempts; return how many. Held jobs are never retried wholesale: each may already
    run on the server, and an operator decides one by one."""
    states = RETRYABLE if job_id is not None else (JobState.FAILED,)
    query = sa.update(jobs).where(jobs.c.state.in_([s.value for s in states]))
    if job_id is not None:
        query = query.where(jobs.c.id == job_id)
    if pipeline is not None:
        query = query.where(jobs.c.pipeline == pipeline)
    query = query.values(
        state=JobState.QUEUED.value, attempts=0, next_attempt_at=store._now, execution_id=None,
        outcome=None, result_body=None, poll_count=0, lease_owner=None, lease_until=None,
        last_error="retried by an operator", updated_at=store._now, finished_at=None,
    )  # fmt: skip
    with store._tx() as conn:
        return int(conn.execute(query).rowcount)


def summaries(store: Store) -> list[PipelineSummary]:
    """Per pipeline: counts by state, in flight, oldest waiting job, paused and why."""
    with store._tx() as conn:
        counts = conn.execute(
            sa.select(jobs.c.pipeline, jobs.c.state, sa.func.count()).group_by(
                jobs.c.pipeline, jobs.c.state
            )
        ).all()
        oldest = dict(
            conn.execute(
                sa.select(jobs.c.pipeline, sa.func.min(jobs.c.created_at))
                .where(jobs.c.state == JobState.QUEUED.value)
                .group_by(jobs.c.pipeline)
            ).all()
        )
        paused = dict(
            conn.execute(sa.select(pipeline_state.c.name, pipeline_state.c.paused_reason)).all()
        )
    by_pipeline: dict[str, dict[str, int]] = {}
    for name, state, count in counts:
        by_pipeline.setdefault(name, {})[state] = int(count)
    names = sorted(set(by_pipeline) | {n for n, r in paused.items() if r})
    in_flight = {s.value for s in IN_FLIGHT}
    return [
        PipelineSummary(
            name=name,
            counts=by_pipeline.get(name, {}),
            in_flight=sum(c for s, c in by_pipeline.get(name, {}).items() if s in in_flight),
            oldest_waiting_since=oldest.get(name),
            paused_reason=paused.get(name, ""),
        )
        for name in names
    ]


def held_jobs(store: Store, pipelines: list[str]) -> int:
    query = (
        sa.select(sa.func.count())
        .where(jobs.c.state == JobState.HELD.value)
        .where(jobs.c.pipeline.in_(pipelines))
    )
    with store._tx() as conn:
        return int(conn.execute(query).scalar_one())


def record_pause(store: Store, name: str, reason: str) -> None:
    """Remember whether a pipeline is paused (reason '' = running), for `status`."""
    values = dict(name=name, paused_reason=reason, updated_at=store._now)
    insert = store._insert(pipeline_state).values(**values)
    upsert = insert.on_conflict_do_update(
        index_elements=[pipeline_state.c.name],
        set_=dict(paused_reason=reason, updated_at=store._now),
    )
    with store._tx() as conn:
        conn.execute(upsert)
