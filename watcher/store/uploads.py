"""The upload workers' queries: claim the next due job, record what the API said."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.jobs import Decision, Job, JobState
from watcher.packs import pick_pack, should_pack
from watcher.store.database import retry_transient
from watcher.store.errors import TRANSIENT_DB_ERRORS
from watcher.store.schema import job_from, jobs, to_job
from watcher.store.statements import pipelines_params
from watcher.store.writes import StoreBase, ends_claim

CLAIM_LOCK_KEY = 0x5557_6174  # PostgreSQL advisory lock: one instance counts in-flight at a time
# Queued jobs looked at per place in a pack: enough to step over same-name and same-content ones.
PACK_LOOKAHEAD = 8


def _by_id(job: Job) -> int:
    return job.id


class Uploads(StoreBase):
    def claim_for_upload(self, owner: str, limits: Mapping[str, int]) -> Job | None:
        """Take the next due queued job of a pipeline that has room for another execution."""
        found = self.claim_execution_for_upload(owner, limits, {})
        return found[0] if found else None

    def claim_execution_for_upload(
        self, owner: str, limits: Mapping[str, int], packing: Mapping[str, int]
    ) -> list[Job]:
        """The jobs of the next execution: the next due queued job of a pipeline that has
        room for another execution, and others of its pipeline to go with it if `packing`
        (documents per execution, by pipeline) allows and a backlog waits. [] if none."""
        return self.db.claim(
            "upload_claim", lambda conn: self._claim_upload(conn, owner, limits, packing)
        )

    def _claim_upload(
        self,
        conn: Connection,
        owner: str,
        limits: Mapping[str, int],
        packing: Mapping[str, int],
    ) -> list[Job]:
        if not self.db.is_sqlite:
            # Instances count in-flight executions one at a time: max_in_flight holds for all.
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
        busy: dict[str, int] = dict(self.sql.in_flight_by_pipeline.run(conn, {}).rows)
        open_pipelines = [p for p, limit in limits.items() if busy.get(p, 0) < limit]
        if not open_pipelines:
            return []
        params = {"claim_owner": owner, "lease_seconds": self.lease_seconds}
        of_open = pipelines_params(open_pipelines)
        claimed = self.sql.claim_upload.run(conn, {**params, **of_open}, len(of_open))
        if not claimed.rows:
            return []
        first = job_from(claimed.mappings()[0])
        size = packing.get(first.pipeline, 1)
        free = limits[first.pipeline] - busy.get(first.pipeline, 0)
        if size <= 1 or first.alone:
            return [first]
        return self._pack(conn, first, size, free, params)

    def _pack(
        self, conn: Connection, first: Job, size: int, free: int, params: dict[str, Any]
    ) -> list[Job]:
        """Take others along with `first` while more documents wait than slots are free."""
        of_pipeline = {"pipeline": first.pipeline}
        waiting = 1 + int(conn.execute(self.sql.queued_due_count, of_pipeline).scalar_one())
        if not should_pack(waiting, free, size):
            return [first]
        candidates = conn.execute(
            self.sql.pack_candidates, {**of_pipeline, "limit": PACK_LOOKAHEAD * size}
        ).all()
        chosen = pick_pack(first, [to_job(row) for row in candidates], size)
        if not chosen:
            return [first]
        pack = {"claim_owner": params["claim_owner"], "lease_seconds": self.lease_seconds}
        rows = conn.execute(
            self.sql.claim_pack, {**pack, "ids": [j.id for j in chosen], "pack_id": first.id}
        ).all()
        conn.execute(self.sql.lead_pack, {"b_id": first.id, "pack_id": first.id})
        return [replace(first, pack_id=first.id), *sorted(map(to_job, rows), key=_by_id)]

    @ends_claim
    def record_submit(self, job: Job, decision: Decision, http_status: int | None) -> bool:
        """Apply what the upload worker decided; fenced on the claim. False if it was lost.

        An accepted upload's execution id is the only link to what the server now runs: its
        write is retried for as long as the database is down (dropped, the document would
        be submitted again as an interrupted upload)."""
        if decision.state is JobState.SKIPPED:
            return self.skip(job, decision.error)
        if decision.state is not JobState.SUBMITTED:
            return self.record_submit_once(job, decision, http_status)
        return self.until_stored(
            "an accepted upload's execution id", self.record_submit_once, job, decision, http_status
        )

    @retry_transient
    def record_submit_once(self, job: Job, decision: Decision, http_status: int | None) -> bool:
        """`record_submit` with one round of retries (none through a long outage)."""
        values = self._submit_values(job, decision, http_status)
        return self.fenced_update(job, JobState.SUBMITTING, values)

    @ends_claim
    def record_submit_and_claim(
        self,
        job: Job,
        decision: Decision,
        http_status: int | None,
        owner: str,
        limits: Mapping[str, int],
    ) -> tuple[bool, Job | None]:
        """`record_submit`, and the worker's next claim in the same transaction: one
        transaction a document instead of two (every writer of SQLite waits for each).
        Through an outage, the answer alone is kept trying, as `record_submit` does."""
        recorded, found = self.record_submit_and_claim_execution(
            job, decision, http_status, owner, limits, {}
        )
        return recorded, found[0] if found else None

    def record_submit_and_claim_execution(
        self,
        job: Job,
        decision: Decision,
        http_status: int | None,
        owner: str,
        limits: Mapping[str, int],
        packing: Mapping[str, int],
    ) -> tuple[bool, list[Job]]:
        """`record_submit_and_claim` whose next claim is `claim_execution_for_upload`'s."""
        try:
            return self._record_submit_and_claim(job, decision, http_status, owner, limits, packing)
        except TRANSIENT_DB_ERRORS:
            return self.record_submit(job, decision, http_status), []

    @retry_transient
    def _record_submit_and_claim(
        self,
        job: Job,
        decision: Decision,
        http_status: int | None,
        owner: str,
        limits: Mapping[str, int],
        packing: Mapping[str, int],
    ) -> tuple[bool, list[Job]]:
        values = self._submit_values(job, decision, http_status)
        recorded = False

        def record_and_claim(conn: Connection) -> list[Job]:
            nonlocal recorded
            recorded = self.sql.fenced(conn, job, JobState.SUBMITTING, values)
            return self._claim_upload(conn, owner, limits, packing)

        found = self.db.claim("upload_claim", record_and_claim, ending=[job])
        return recorded, found

    def record_execution_submit(
        self, decided: Sequence[tuple[Job, Decision]], http_status: int | None
    ) -> list[bool]:
        """Apply the decisions about the jobs of one packed upload in one transaction (the
        execution id is recorded for all of them before any poll); fenced on each claim.
        An accepted one is kept trying through an outage, as `record_submit` does."""
        try:
            if any(d.state is JobState.SUBMITTED for _, d in decided):
                return self.until_stored(
                    "an accepted upload's execution id",
                    self._record_execution_submit,
                    decided,
                    http_status,
                )
            return self._record_execution_submit(decided, http_status)
        except BaseException:
            self.let_go(job for job, _ in decided)
            raise

    @retry_transient
    def _record_execution_submit(
        self, decided: Sequence[tuple[Job, Decision]], http_status: int | None
    ) -> list[bool]:
        jobs_ = [job for job, _ in decided]
        with self.db.write(ending=jobs_) as conn:
            return [
                self.sql.fenced(
                    conn, job, JobState.SUBMITTING, self._submit_values(job, d, http_status)
                )
                for job, d in decided
            ]

    def _submit_values(
        self, job: Job, decision: Decision, http_status: int | None
    ) -> dict[str, Any]:
        values: dict[str, Any] = self.decision_values(decision, http_status)
        if decision.state is JobState.SUBMITTED:
            values.update(
                execution_id=decision.execution_id, submitted_at=values["updated_at"], poll_count=0
            )
        if decision.refund_attempt:
            values["attempts"] = job.attempts - 1  # the fence makes sure it is still that
        return values

    @ends_claim
    @retry_transient
    def skip(self, job: Job, reason: str) -> bool:
        """The file vanished or changed before its upload: the job is skipped."""
        values = {
            "state": JobState.SKIPPED.value,
            "last_error": reason,
            "finished_at": self.clock(),
        }
        return self.fenced_update(job, JobState.SUBMITTING, values)

    def next_attempt_due_in(self, pipelines: list[str]) -> float | None:
        """Seconds until the earliest queued job may be uploaded (<= 0: now); None: none."""
        return self.due_in(jobs.c.next_attempt_at, JobState.QUEUED, pipelines)

    def make_queued_due(self, pipeline: str) -> int:
        """Queued jobs of a pipeline may go now (after a pause ends); return how many."""
        with self.db.write() as conn:
            result = conn.execute(
                sa.update(jobs)
                .where(jobs.c.pipeline == pipeline)
                .where(jobs.c.state == JobState.QUEUED.value)
                .values(next_attempt_at=self.db.now)
            )
        return int(result.rowcount)
