"""Queries for the operator's commands (status, jobs, retry, report) and the metrics.

They run against the same database as a live daemon: short transactions, and a retry only
moves a job back to `queued`, where the daemon's upload workers pick it up.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.jobs import IN_FLIGHT, Job, JobState
from watcher.notices import pause_draft
from watcher.store.errors import StoreError, store_error
from watcher.store.outbox import add_notices
from watcher.store.schema import JOB_COLUMNS, answers, jobs, pipeline_state, to_job
from watcher.store.statements import moved
from watcher.store.store import Store

RETRYABLE = (JobState.FAILED, JobState.SKIPPED, JobState.HELD)


class NotSetUp(StoreError):
    """The database file or its schema is missing or behind: the daemon never set it up here."""


ID_SLICE = 500  # values per IN (...) list, well under every database's limit


@dataclass(frozen=True)
class PipelineSummary:
    name: str
    counts: dict[str, int]  # every state -> jobs (0 included)
    in_flight: int
    in_flight_executions: int  # the executions those documents are in (several may share one)
    oldest_waiting_since: float | None  # created_at of the oldest queued job
    paused_reason: str
    in_config: bool  # False: jobs of a pipeline that the config no longer has


def open_existing(url: str, busy_timeout_seconds: float) -> Store:
    """Open a database that `run` or `db upgrade` set up; never create or migrate one (an
    operator in the wrong folder, or root before the first start, would get an empty one)."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise NotSetUp(f"there is no database file {database or '(none)'}")
    store = Store(url, busy_timeout_seconds)
    try:
        _check_schema(store)
    except StoreError:
        store.close()
        raise
    return store


def _check_schema(store: Store) -> None:
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with as_file(files("watcher._migrations")) as folder:
        head = ScriptDirectory(str(folder)).get_current_head()
    with reading(store) as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        raise NotSetUp("it has no job table")
    if current != head:
        raise NotSetUp(f"its schema is at revision {current}, this version needs {head}")


@contextmanager
def reading(store: Store) -> Iterator[Connection]:
    """A read transaction (never waits for the daemon's writes); database errors become
    StoreError, which the commands report as unreachable and the metrics as down."""
    try:
        with store.db.read() as conn:
            yield conn
    except sa.exc.SQLAlchemyError as exc:
        raise store_error(exc) from None


def jobs_newest_first(
    store: Store,
    *,
    state: str | None = None,
    pipeline: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[Job]:
    """Jobs, newest first, filtered by state, pipeline and creation time (epoch seconds)."""
    query = sa.select(*JOB_COLUMNS).order_by(jobs.c.id.desc())
    if state is not None:
        query = query.where(jobs.c.state == state)
    if pipeline is not None:
        query = query.where(jobs.c.pipeline == pipeline)
    if since is not None:
        query = query.where(jobs.c.created_at >= since)
    if limit is not None:
        query = query.limit(limit)
    with reading(store) as conn:
        return [to_job(row) for row in conn.execute(query).all()]


def get_job(store: Store, job_id: int) -> Job | None:
    with reading(store) as conn:
        row = conn.execute(sa.select(*JOB_COLUMNS).where(jobs.c.id == job_id)).first()
    return to_job(row) if row else None


def retry_jobs(store: Store, job_ids: Sequence[int]) -> int:
    """Queue these jobs again with fresh attempts, those still failed, skipped or held;
    return how many. Which ones (held jobs only one by one) the caller decides."""
    query = (
        sa.update(jobs)
        .where(jobs.c.state.in_([s.value for s in RETRYABLE]))
        .where(jobs.c.id.in_(list(job_ids)))
        .values(state=_retried_state(), last_error="retried by an operator", **_fresh(store))
        .returning(jobs.c.id)
    )
    try:
        with store.db.write() as conn:
            retried = list(conn.execute(query).scalars())
            # Sent again: an answer kept from the last try is not theirs any more.
            conn.execute(sa.delete(answers).where(answers.c.job_id.in_(retried)))
            return len(retried)
    except sa.exc.SQLAlchemyError as exc:
        raise store_error(exc) from None


def _retried_state() -> str:
    """Queued: a move every retryable state may make (checked against the transitions)."""
    for state in RETRYABLE:
        moved(state, JobState.QUEUED)
    return JobState.QUEUED.value


def _fresh(store: Store) -> dict[str, Any]:
    """The columns of a job that was never tried, due now."""
    now = store.db.now
    nothing = (
        *("execution_id", "outcome", "lease_owner", "lease_until"),
        *("answer_dropped_at", "cost_in_dollars", "result_file"),
    )
    return {
        "attempts": 0,
        "poll_count": 0,
        "next_attempt_at": now,
        "updated_at": now,
        "finished_at": None,
        **dict.fromkeys(nothing),
    }


def summaries(store: Store, configured: Collection[str] | None = None) -> list[PipelineSummary]:
    """Per pipeline: counts by state, in flight, oldest waiting job, paused and why.

    With `configured` (the config's pipeline names), those are listed even without jobs, and
    others only if they have jobs, marked as not in the config: a pause recorded for a
    pipeline that was removed since means nothing any more.
    """
    with reading(store) as conn:
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
        executions: dict[str, int] = dict(store.sql.in_flight_by_pipeline.run(conn, {}).rows)
    by_pipeline: dict[str, dict[str, int]] = {}
    for name, state, count in counts:
        by_pipeline.setdefault(name, _no_jobs())[state] = int(count)
    if configured is None:
        configured = set(by_pipeline) | {n for n, r in paused.items() if r}
    names = sorted(set(by_pipeline) | set(configured))
    return [
        replace(
            _summary(name, by_pipeline, oldest, paused, name in configured),
            in_flight_executions=int(executions.get(name, 0)),
        )
        for name in names
    ]


def _no_jobs() -> dict[str, int]:
    return {state.value: 0 for state in JobState}


def _summary(
    name: str,
    by_pipeline: dict[str, dict[str, int]],
    oldest: dict[str, float],
    paused: dict[str, str],
    in_config: bool,
) -> PipelineSummary:
    counts = by_pipeline.get(name) or _no_jobs()
    return PipelineSummary(
        name=name,
        counts=counts,
        in_flight=sum(counts.get(s.value, 0) for s in IN_FLIGHT),
        in_flight_executions=0,
        oldest_waiting_since=oldest.get(name),
        paused_reason=paused.get(name, "") if in_config else "",
        in_config=in_config,
    )


def execution_documents(store: Store, execution_ids: Collection[str]) -> dict[str, list[Job]]:
    """The jobs of each of these executions, in id order: several for a shared execution.
    Asked a slice at a time (a report may name tens of thousands)."""
    found: dict[str, list[Job]] = {eid: [] for eid in execution_ids}
    wanted = sorted(found)
    with reading(store) as conn:
        for start in range(0, len(wanted), ID_SLICE):
            query = (
                sa.select(*JOB_COLUMNS)
                .where(jobs.c.execution_id.in_(wanted[start : start + ID_SLICE]))
                .order_by(jobs.c.id)
            )
            for row in conn.execute(query).all():
                job = to_job(row)
                found[str(job.execution_id)].append(job)
    return found


def held_jobs(store: Store, pipelines: list[str]) -> int:
    query = (
        sa.select(sa.func.count())
        .where(jobs.c.state == JobState.HELD.value)
        .where(jobs.c.pipeline.in_(pipelines))
    )
    with store.db.write() as conn:
        return int(conn.execute(query).scalar_one())


def record_pause(store: Store, name: str, reason: str, announce: bool = False) -> None:
    """Remember whether a pipeline is paused (reason '' = running), for `status`; with
    `announce`, a pause that begins or ends puts its notice in the outbox, in the same
    transaction (so it is sent once, whichever instance saw it)."""
    values = {"paused_reason": reason, "updated_at": store.db.now}
    insert = store.db.insert(pipeline_state).values(name=name, **values)
    upsert = insert.on_conflict_do_update(index_elements=[pipeline_state.c.name], set_=values)
    was = sa.select(pipeline_state.c.paused_reason).where(pipeline_state.c.name == name)
    with store.db.write() as conn:
        before = conn.execute(was.with_for_update()).scalar() if announce else None
        conn.execute(upsert)
        draft = pause_draft(name, before or "", reason) if announce else None
        add_notices(conn, [draft] if draft else [], store.clock())


def announce_pause(store: Store, name: str, reason: str) -> None:
    """The notice of a pause recorded without one: an API outage, once past its grace (a
    short one is no news). Its end then goes out as `record_pause` with `announce`."""
    draft = pause_draft(name, "", reason)
    with store.db.write() as conn:
        add_notices(conn, [draft] if draft else [], store.clock())
