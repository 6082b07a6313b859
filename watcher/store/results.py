"""The finisher's queries: claim jobs whose outcome is stored, mark their files written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from watcher.jobs import Job, JobState, ResultFile
from watcher.notices import Draft
from watcher.store.database import retry_transient
from watcher.store.outbox import add_notices
from watcher.store.schema import ANSWER_KEPT, JOB_COLUMNS, db_path, fs_path, jobs, to_job
from watcher.store.statements import moved, pipelines_params
from watcher.store.writes import StoreBase


class Results(StoreBase):
    def claim_stored_results(self, owner: str, limit: int, pipelines: list[str]) -> list[Job]:
        """Take jobs whose outcome is stored, to write their files (one instance per job)."""
        return self.claim_many("result_claim", self.sql.claim_results, owner, limit, pipelines)

    def next_result_due_in(self, owner: str, pipelines: list[str]) -> float | None:
        """Seconds until `claim_stored_results` would take a job (<= 0: now); None: none
        is stored. A read: no write lock while there is nothing to write."""
        params = {"owner": owner, **pipelines_params(pipelines)}
        with self.db.read() as conn:
            first = self.sql.results_due.run(conn, params, len(pipelines)).rows[0][0]
        return None if first is None else float(first)

    def give_back_results(self, unwritten: Sequence[Job]) -> None:
        """Their files could not be written: the claims end and the results stay stored, for
        the next try by any instance (not orphans for `release_orphans` to report)."""
        if not unwritten:
            return
        free = {"lease_owner": None, "lease_until": None}
        with self.db.write(ending=unwritten) as conn:
            for job in sorted(unwritten, key=lambda job: job.id):  # as other updates lock them
                self.sql.fenced(conn, job, JobState.RESULT_STORED, free)

    def newest_finished_versions(self, batch: Sequence[Job]) -> dict[tuple[str, str], int]:
        """By (pipeline, path) of these jobs: the highest version that has finished."""
        texts = sorted({db_path(job.relative_path)[0] for job in batch})
        if not texts:
            return {}
        key = (jobs.c.pipeline, jobs.c.relative_path, jobs.c.relative_path_raw)
        query = (
            sa.select(*key, sa.func.max(jobs.c.version))
            .where(jobs.c.pipeline.in_(sorted({job.pipeline for job in batch})))
            .where(jobs.c.relative_path.in_(texts))
            .where(jobs.c.state.in_([JobState.DONE.value, JobState.FAILED.value]))
            .group_by(*key)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return {(row[0], fs_path(row[1], row[2])): int(row[3]) for row in rows if row[3]}

    @retry_transient
    def revive_newest_superseded(self, superseded: Sequence[Job]) -> int:
        """Jobs just marked superseded that are their path's newest version after all: their
        content came back (A -> B -> A) while the finisher held them, so discovery only
        raised their version. Their stored result is to be written again; returns how many."""
        if not superseded:
            return 0
        other = jobs.alias("other")
        newest = (
            sa.select(sa.func.max(other.c.version))
            .where(other.c.pipeline == jobs.c.pipeline)
            .where(other.c.relative_path == jobs.c.relative_path)
            .where(other.c.relative_path_raw.is_not_distinct_from(jobs.c.relative_path_raw))
            .scalar_subquery()
        )
        finished = [JobState.DONE, JobState.FAILED]
        state = {moved(s, JobState.RESULT_STORED) for s in finished}.pop()  # both may move
        query = (
            sa.update(jobs)
            .where(jobs.c.id.in_(sorted(job.id for job in superseded)))
            .where(jobs.c.result_file == ResultFile.SUPERSEDED.value)
            .where(jobs.c.state.in_([s.value for s in finished]))
            .where(ANSWER_KEPT)
            .where(jobs.c.version >= newest)
            .values(
                state=state,
                result_file=None,
                finished_at=None,
                updated_at=self.clock(),
            )
        )
        with self.db.write() as conn:
            return int(conn.execute(query).rowcount)

    def content_at_path(self, job: Job, sha256: str) -> Job | None:
        """The job of another content (by its sha256) that the job's path held."""
        text, raw = db_path(job.relative_path)
        query = sa.select(*JOB_COLUMNS).where(_at_path(job.pipeline, text, raw))
        with self.db.read() as conn:
            row = conn.execute(query.where(jobs.c.sha256 == sha256)).first()
        return None if row is None else to_job(row)

    @retry_transient
    def set_result_files(self, places: Mapping[int, ResultFile]) -> None:
        """Where these finished jobs' result files are now (kept aside, or replaced)."""
        ended = jobs.c.state.in_([JobState.DONE.value, JobState.FAILED.value])
        with self.db.write() as conn:
            for job_id, place in sorted(places.items()):
                query = sa.update(jobs).where((jobs.c.id == job_id) & ended)
                conn.execute(query.values(result_file=place.value))

    def mark_finished(self, job: Job) -> bool:
        return self.mark_finished_many([job])[0]

    def mark_finished_many(
        self, finished: Sequence[Job], notices: Mapping[int, Draft] | None = None
    ) -> list[bool]:
        """Their files are written: done or failed, in one transaction; fenced on the claim.
        A job's notice (by job id) goes into the outbox in the same transaction, if its
        change was made."""
        try:
            return self._mark_finished_many(finished, notices or {})
        except BaseException:
            self.let_go(finished)
            raise

    @retry_transient
    def _mark_finished_many(
        self, finished: Sequence[Job], notices: Mapping[int, Draft]
    ) -> list[bool]:
        now = self.clock()
        # In id order, as other multi-row updates lock them.
        with self.db.write(ending=finished) as conn:
            done = {
                job.id: self.sql.fenced(conn, job, JobState.RESULT_STORED, _finished(job, now))
                for job in sorted(finished, key=lambda job: job.id)
            }
            drafts = (d for job_id, d in notices.items() if done.get(job_id))
            add_notices(conn, drafts, now)
        return [done[job.id] for job in finished]


def _finished(job: Job, now: float) -> dict[str, Any]:
    state = JobState.DONE if job.outcome == "success" else JobState.FAILED
    return {
        "state": state.value,
        "finished_at": now,
        "updated_at": now,
        "lease_owner": None,
        "result_file": (job.result_file or ResultFile.AT_PATH).value,
    }


def _at_path(pipeline: str, text: str, raw: bytes | None) -> sa.ColumnElement[bool]:
    same_raw = (
        jobs.c.relative_path_raw.is_(None) if raw is None else (jobs.c.relative_path_raw == raw)
    )
    return (jobs.c.pipeline == pipeline) & (jobs.c.relative_path == text) & same_raw
