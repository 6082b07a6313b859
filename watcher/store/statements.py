"""The statements that run for every document, built once with bind parameters: building
one (and its cache key) costs more than running it on SQLite. `Store` runs them; the
hottest are `Prepared` (driver.py): compiled once per shape, run on the driver's cursor.

Every state a statement writes is checked against `jobs.TRANSITIONS` (`moved`, `fenced`):
a write that would take a job along an edge the table does not have is a programming error.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.jobs import IN_FLIGHT, Job, JobState, can_move
from watcher.store.driver import Prepared, one_of, one_of_params
from watcher.store.schema import ANSWER_KEPT, JOB_COLUMNS, answers, jobs, results


class IllegalTransition(AssertionError):
    """A write would move a job along an edge that `jobs.TRANSITIONS` does not have."""


def moved(source: JobState, target: JobState) -> str:
    """The state value to write for a job in `source`; raises if the move is not allowed."""
    if not can_move(source, target):
        raise IllegalTransition(f"a job may not go from {source.value} to {target.value}")
    return target.value


SIBLING_SLACK_SECONDS = 1.0  # well under a lease
DUE_COLUMNS = ((JobState.QUEUED, jobs.c.next_attempt_at), (JobState.SUBMITTED, jobs.c.next_poll_at))
PIPELINE_PARAM = "pipeline_"


def of_pipelines(count: int) -> sa.ColumnElement[bool]:
    """The job's pipeline is one of `count` given by `pipelines_params`."""
    return one_of(jobs.c.pipeline, count, PIPELINE_PARAM)


def pipelines_params(pipelines: list[str]) -> dict[str, str]:
    return one_of_params(PIPELINE_PARAM, pipelines)


def _set_from(statement: Any, keys: tuple[str, ...]) -> Any:
    """`statement` with a SET (or VALUES) clause of one parameter per key, named as its column."""
    return statement.values({key: sa.bindparam(key) for key in keys})


class Statements:
    def __init__(self, now: Any, insert: Any) -> None:
        self.now = now  # the database's clock, as an SQL expression
        self.insert = insert  # the dialect's INSERT, with ON CONFLICT
        lease_until = self.now + sa.bindparam("lease_seconds", type_=sa.Double)
        self._prepare_discovery()
        self._prepare_upload_claim(lease_until)
        self._prepare_poll_and_write_claims(lease_until)
        # Every state change: the SET clause comes from the parameters' keys (see `fenced`).
        fenced_update = (
            sa.update(jobs)
            .where(jobs.c.id == sa.bindparam("b_id"))
            .where(jobs.c.state == sa.bindparam("b_state"))
            .where(jobs.c.attempts == sa.bindparam("b_attempts"))
            .where(jobs.c.lease_owner.is_not_distinct_from(sa.bindparam("b_owner")))
        )
        self.fenced_update = Prepared(lambda keys: _set_from(fenced_update, keys))
        # A terminal answer's record by execution id, VALUES by the parameters' keys.
        # RETURNING, not rowcount: psycopg gives none for an INSERT ... ON CONFLICT.
        keep = self.insert(results).on_conflict_do_nothing().returning(results.c.execution_id)
        self.keep_result = Prepared(lambda keys: _set_from(keep, keys))
        # A job's answer, in the transaction that records its poll (it is read once); one
        # left by an earlier execution of the same job is replaced.
        store_answer = self.insert(answers).values(
            job_id=sa.bindparam("job_id"),
            body=sa.bindparam("body"),
            stored_at=sa.bindparam("stored_at", type_=sa.Double),
        )
        store_answer = store_answer.on_conflict_do_update(
            index_elements=[answers.c.job_id],
            set_={"body": store_answer.excluded.body, "stored_at": store_answer.excluded.stored_at},
        )
        self.store_answer = Prepared(lambda _: store_answer)
        self.clear_kept_body = (
            sa.update(results)
            .where(results.c.execution_id == sa.bindparam("b_execution_id"))
            .values(body=None)
        )
        self.due = {
            (state, column.name): _due(self.now, state, column) for state, column in DUE_COLUMNS
        }

    def fenced(
        self, conn: Connection, job: Job, expected: JobState, values: dict[str, Any]
    ) -> bool:
        """Update only if the row is still as we claimed it: same state, attempt and owner.
        An instance whose lease ran out and was taken over changes nothing. `values` are
        plain values (the SET clause is built from their keys on a prebuilt statement)."""
        if "state" in values:
            moved(expected, JobState(values["state"]))
        fence = {
            "b_id": job.id,
            "b_state": expected.value,
            "b_attempts": job.attempts,
            "b_owner": job.lease_owner,
        }
        ran = self.fenced_update.run(conn, {**values, **fence}, tuple(values))
        return bool(ran.rowcount)

    def _prepare_upload_claim(self, lease_until: Any) -> None:
        # Executions, not jobs: the jobs of a packed claim count once while being sent (by
        # their pack), and once they are sent by the execution id they share.
        execution = sa.case(
            (
                jobs.c.state == JobState.SUBMITTING.value,
                sa.literal("claim ")
                + sa.cast(sa.func.coalesce(jobs.c.pack_id, jobs.c.id), sa.String),
            ),
            else_=sa.func.coalesce(
                jobs.c.execution_id, sa.literal("job ") + sa.cast(jobs.c.id, sa.String)
            ),
        )
        in_flight_by_pipeline = (
            sa.select(jobs.c.pipeline, sa.func.count(sa.distinct(execution)))
            .where(sa.or_(*(jobs.c.state == state.value for state in IN_FLIGHT)))
            .group_by(jobs.c.pipeline)
        )
        self.in_flight_by_pipeline = Prepared(lambda _: in_flight_by_pipeline)
        due_queued = (jobs.c.state == JobState.QUEUED.value) & (jobs.c.next_attempt_at <= self.now)

        def candidate(pipelines: int) -> Any:
            return (
                sa.select(jobs.c.id)
                .where(due_queued)
                .where(of_pipelines(pipelines))
                .order_by(jobs.c.next_attempt_at, jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )

        claimed = {
            "state": moved(JobState.QUEUED, JobState.SUBMITTING),
            "attempts": jobs.c.attempts + 1,
            "lease_owner": sa.bindparam("claim_owner"),
            "lease_until": lease_until,
            "updated_at": self.now,
        }
        self.claim_upload = Prepared(
            lambda pipelines: (
                sa.update(jobs)
                .where(jobs.c.id == candidate(pipelines))
                .values(**claimed, pack_id=None)
                .returning(*JOB_COLUMNS)
            )
        )
        self._prepare_pack_claim(due_queued, claimed)

    def _prepare_pack_claim(self, due_queued: Any, claimed: dict[str, Any]) -> None:
        """A claim's first job may take others of its pipeline along into one execution."""
        of_pipeline = jobs.c.pipeline == sa.bindparam("pipeline")
        self.queued_due_count = sa.select(sa.func.count()).where(due_queued & of_pipeline)
        self.pack_candidates = (
            sa.select(*JOB_COLUMNS)
            .where(due_queued & of_pipeline & jobs.c.alone.is_(False))
            .order_by(jobs.c.next_attempt_at, jobs.c.id)
            .limit(sa.bindparam("limit", type_=sa.Integer))
            .with_for_update(skip_locked=True)
        )
        self.claim_pack = (
            sa.update(jobs)
            .where(jobs.c.id.in_(sa.bindparam("ids", expanding=True)))
            .where(jobs.c.state == JobState.QUEUED.value)
            .values(**claimed, pack_id=sa.bindparam("pack_id"))
            .returning(*JOB_COLUMNS)
        )
        self.lead_pack = (
            sa.update(jobs)
            .where(jobs.c.id == sa.bindparam("b_id"))
            .values(pack_id=sa.bindparam("pack_id"))
        )

    def _prepare_discovery(self) -> None:
        # What a scan asks of a batch of paths (through the index on pipeline and path).
        columns = (jobs.c.relative_path, jobs.c.relative_path_raw, jobs.c.sha256)
        self.known_versions = (
            sa.select(*columns, jobs.c.size, jobs.c.mtime_ns)
            .where(jobs.c.pipeline == sa.bindparam("b_pipeline"))
            .where(jobs.c.relative_path.in_(sa.bindparam("b_paths", expanding=True)))
            .order_by(jobs.c.version, jobs.c.id)
        )
        # The SET clauses come from the parameters' keys, as in `fenced`; a new content is
        # the newest version of its path.
        path = (jobs.c.pipeline == sa.bindparam("pipeline")) & (
            jobs.c.relative_path == sa.bindparam("relative_path")
        )
        next_version = sa.select(sa.func.coalesce(sa.func.max(jobs.c.version), 0) + 1)
        insert_job = (
            self.insert(jobs)
            .values(version=next_version.where(path).scalar_subquery())
            .on_conflict_do_nothing()
            .returning(jobs.c.id)
        )
        self.insert_job = Prepared(lambda keys: _set_from(insert_job, keys))
        document = (
            (jobs.c.pipeline == sa.bindparam("b_pipeline"))
            & (jobs.c.relative_path == sa.bindparam("b_path"))
            & (jobs.c.sha256 == sa.bindparam("b_sha256"))
        )
        self.revive_skipped = (
            sa.update(jobs)
            .where(document & (jobs.c.state == JobState.SKIPPED.value))
            .returning(jobs.c.id)
        )
        self.refresh_known = sa.update(jobs).where(document)
        # A known content, and the newest version of its path: less, and it came back.
        newest = (
            sa.select(sa.func.max(jobs.c.version))
            .where(jobs.c.pipeline == sa.bindparam("b_pipeline"))
            .where(jobs.c.relative_path == sa.bindparam("b_path"))
            .scalar_subquery()
        )
        kept = ANSWER_KEPT.label("answer_kept")
        self.known_document = sa.select(
            jobs.c.id, jobs.c.state, jobs.c.version, kept, newest.label("newest")
        ).where(document)

    def _prepare_poll_and_write_claims(self, lease_until: Any) -> None:
        submitted = jobs.c.state == JobState.SUBMITTED.value

        def due_polls(pipelines: int) -> Any:
            return (
                sa.select(jobs.c.execution_id)
                .where(submitted & (jobs.c.next_poll_at <= self.now))
                .where(of_pipelines(pipelines))
                .order_by(jobs.c.next_poll_at)
                .limit(sa.bindparam("limit", type_=sa.Integer))
                .with_for_update(skip_locked=True)
                .cte("due_polls")
                # Run once: a subquery run again per row would skip the rows just locked and
                # take others (PostgreSQL).
                .prefix_with("MATERIALIZED", dialect="postgresql")
            )

        # Whole executions: every job of a due one that no one holds (a claim moves its
        # next poll a lease ahead), polled together by one poll; siblings written by one
        # transaction may differ by its clock's ticks. Claims of polls take turns on
        # PostgreSQL (Polls.claim_due_polls).
        unleased = jobs.c.next_poll_at <= self.now + SIBLING_SLACK_SECONDS
        self.claim_polls = Prepared(
            lambda pipelines: (
                sa.update(jobs)
                .where(jobs.c.execution_id.in_(sa.select(due_polls(pipelines).c.execution_id)))
                .where(submitted & unleased)
                .values(
                    lease_owner=sa.bindparam("owner"),
                    lease_until=lease_until,
                    next_poll_at=lease_until,
                )
                .returning(*JOB_COLUMNS)
            )
        )
        free = (
            jobs.c.lease_owner.is_(None)
            | (jobs.c.lease_owner == sa.bindparam("owner"))  # ours: e.g. after a full disk
            | jobs.c.lease_until.is_(None)
            | (jobs.c.lease_until < self.now)
        )

        def ready(pipelines: int) -> Any:
            return (
                sa.select(jobs.c.id)
                .where(jobs.c.state == JobState.RESULT_STORED.value)
                .where(of_pipelines(pipelines))
                .where(free)
                .order_by(jobs.c.id)
                .limit(sa.bindparam("limit", type_=sa.Integer))
                .with_for_update(skip_locked=True)
            )

        self.claim_results = Prepared(
            lambda pipelines: (
                sa.update(jobs)
                .where(jobs.c.id.in_(ready(pipelines)))
                .values(lease_owner=sa.bindparam("owner"), lease_until=lease_until)
                .returning(*JOB_COLUMNS)
            )
        )
        # Seconds until `claim_results` would take a job (<= 0: now; NULL: none is stored).
        free_whenever = (
            jobs.c.lease_owner.is_(None)
            | (jobs.c.lease_owner == sa.bindparam("owner"))
            | jobs.c.lease_until.is_(None)
        )
        takes_at = sa.case((free_whenever, 0.0), else_=jobs.c.lease_until)
        self.results_due = Prepared(
            lambda pipelines: (
                sa.select(sa.func.min(takes_at) - self.now)
                .where(jobs.c.state == JobState.RESULT_STORED.value)
                .where(of_pipelines(pipelines))
            )
        )


def _due(now: Any, state: JobState, column: sa.Column[Any]) -> Prepared:
    """Seconds until the earliest `column` of a job in `state` of the pipelines asked about."""
    return Prepared(
        lambda pipelines: (
            sa.select(sa.func.min(column) - now)
            .where(jobs.c.state == state.value)
            .where(of_pipelines(pipelines))
        )
    )
