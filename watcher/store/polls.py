"""The reconciler's queries: claim due polls, mark a read-once fetch, record the answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.jobs import Decision, Job, JobState
from watcher.store.database import retry_transient
from watcher.store.schema import answers, job_from, jobs, pipeline_state, results
from watcher.store.statements import pipelines_params
from watcher.store.writes import StoreBase, ends_claim

POLL_CLAIM_LOCK_KEY = 0x5557_706C  # PostgreSQL advisory lock: one poll claim at a time


class Polls(StoreBase):
    @retry_transient
    def remember_execution_seconds(self, pipeline: str, seconds: float) -> None:
        """Keep what a pipeline has learnt of its executions' time for the next start (its
        row exists: the daemon records each pipeline's pause state when it starts)."""
        update = sa.update(pipeline_state).where(pipeline_state.c.name == pipeline)
        with self.db.write() as conn:
            conn.execute(update.values(execution_seconds=seconds))

    def learnt_execution_seconds(self) -> dict[str, float]:
        """What each pipeline had learnt of its executions' time, by name."""
        learnt = pipeline_state.c.execution_seconds
        query = sa.select(pipeline_state.c.name, learnt).where(learnt.is_not(None))
        with self.db.read() as conn:
            return {name: float(seconds) for name, seconds in conn.execute(query).all()}

    def claim_due_polls(self, owner: str, limit: int, pipelines: list[str]) -> list[Job]:
        """Take executions whose next poll is due. Moving next_poll_at a lease ahead keeps
        other instances off them until we record the answer (or die)."""
        params = {
            "owner": owner,
            "limit": limit,
            "lease_seconds": self.lease_seconds,
            **pipelines_params(pipelines),
        }

        def claim(conn: Connection) -> list[Job]:
            if not self.db.is_sqlite:
                # One claim at a time, so that two never split the jobs of one execution
                # (the second would find its result read: SQLite has one writer anyway).
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(POLL_CLAIM_LOCK_KEY)))
            claimed = self.sql.claim_polls.run(conn, params, len(pipelines))
            return [job_from(row) for row in claimed.mappings()]

        return sorted(self.db.claim("poll_claim", claim), key=lambda job: job.id)

    @ends_claim
    @retry_transient
    def release_poll(self, job: Job) -> bool:
        """Give back a claimed poll not made (its pipeline was removed by a reload): it is
        due again at once for whoever serves that pipeline."""
        values = {"lease_owner": None, "lease_until": None, "next_poll_at": self.clock()}
        return self.fenced_update(job, JobState.SUBMITTED, values)

    def begin_fetch(self, job: Job) -> bool:
        """Mark that a read-once result is being fetched, before the request is sent. False:
        the claim is lost (or its answer was: then `release_orphans` sends it back to
        polling), and nothing may be fetched."""
        started = False
        try:
            started = self._begin_fetch(job)
        finally:
            if not started:
                self.let_go([job])
        return started

    @retry_transient
    def _begin_fetch(self, job: Job) -> bool:
        now = self.clock()
        values = {
            "state": JobState.FETCHING.value,
            "updated_at": now,
            "lease_until": now + self.lease_seconds,
        }
        with self.db.write(lose_answer_at="fetch_claim") as conn:
            return self.sql.fenced(conn, job, JobState.SUBMITTED, values)

    @ends_claim
    def record_poll(
        self,
        job: Job,
        decision: Decision,
        http_status: int | None,
        body: Any = None,
        fetching: bool = False,
    ) -> bool:
        """Apply a poll's (or a fetch's) decision. A result is stored in the same transaction,
        also in `results` by execution id, kept even if the job was taken over meanwhile.

        A terminal body in hand may be the only copy there is (the server hands it out once):
        its write is retried for as long as the database is down, never dropped.
        """
        if body is None:
            return self.record_poll_once(job, decision, http_status, body, fetching)
        return self.until_stored(
            "a result that the API hands out once",
            self.record_poll_once,
            job,
            decision,
            http_status,
            body,
            fetching,
        )

    @retry_transient
    def record_poll_once(
        self, job: Job, decision: Decision, http_status: int | None, body: Any, fetching: bool
    ) -> bool:
        """`record_poll` with one round of retries (none through a long outage)."""
        values = self._poll_values(job, decision, http_status)
        answer = _answer(decision, body)
        expected = JobState.FETCHING if fetching else JobState.SUBMITTED
        with self.db.write(ending=[job]) as conn:
            stored = self._record(conn, job, expected, values, answer)
            if answer is not None and decision.outcome is not None and job.execution_id:
                kept = (answer, values["updated_at"])
                self._keep_result(conn, job, decision, kept, in_job_row=stored)
            return stored

    def _record(
        self,
        conn: Connection,
        job: Job,
        expected: JobState,
        values: dict[str, Any],
        answer: str | None,
    ) -> bool:
        """A poll's state change, fenced, and the answer it stored (in its own table), in
        the caller's transaction."""
        stored = self.sql.fenced(conn, job, expected, values)
        if stored and answer is not None:
            row = {"job_id": job.id, "body": answer, "stored_at": values["updated_at"]}
            self.sql.store_answer.run(conn, row)
        return stored

    def _poll_values(self, job: Job, decision: Decision, http_status: int | None) -> dict[str, Any]:
        values: dict[str, Any] = self.decision_values(decision, http_status)
        values["poll_count"] = job.poll_count + 1  # only the claim's holder polls it
        if decision.state is JobState.QUEUED:
            values["execution_id"] = None
        return values

    def record_execution_poll(
        self,
        decided: Sequence[tuple[Job, Decision]],
        http_status: int | None,
        body: Any,
        answer: Decision,
    ) -> list[bool]:
        """Apply one poll of a shared execution to each of its claimed jobs, in one
        transaction, with its terminal body (if any) kept by execution id as well: read
        once, the answer is stored for every document of the execution in the transaction
        that records it. `answer` is the execution's own outcome, for `results`. Retried
        through an outage while a body is in hand, as `record_poll` is."""
        try:
            if body is None:
                return self._record_execution_poll(decided, http_status, body, answer)
            return self.until_stored(
                "a result that the API hands out once",
                self._record_execution_poll,
                decided,
                http_status,
                body,
                answer,
            )
        except BaseException:
            self.let_go(job for job, _ in decided)
            raise

    @retry_transient
    def _record_execution_poll(
        self,
        decided: Sequence[tuple[Job, Decision]],
        http_status: int | None,
        body: Any,
        answer: Decision,
    ) -> list[bool]:
        claimed = sorted(decided, key=lambda pair: pair[0].id)  # rows locked in id order
        with self.db.write(ending=[job for job, _ in claimed]) as conn:
            done = {
                job.id: self._record(
                    conn,
                    job,
                    JobState.SUBMITTED,
                    self._poll_values(job, d, http_status),
                    _answer(d, d.result_body),
                )
                for job, d in claimed
            }
            if body is not None and answer.outcome is not None:
                # One copy: a job row that now holds the answer, else here in `results`.
                holders = [
                    job
                    for job, d in claimed
                    if done[job.id] and d.state is JobState.RESULT_STORED and d.result_body
                ]
                lead = holders[0] if holders else claimed[0][0]
                kept = (json.dumps(body), self.clock())
                self._keep_result(conn, lead, answer, kept, in_job_row=bool(holders))
        return [done[job.id] for job, _ in decided]

    def _keep_result(
        self,
        conn: Connection,
        job: Job,
        decision: Decision,
        answer: tuple[str, float],
        in_job_row: bool,
    ) -> None:
        """One copy of the answer: the job's (in `answers`), or here if the job was taken
        over (its holder finds it by execution id). A copy another instance left here is
        cleared once the job holds the answer. `answer`: its JSON and when it was stored."""
        body, stored_at = answer
        kept = {
            "execution_id": job.execution_id,
            "job_id": job.id,
            "outcome": decision.outcome,
            "error": decision.error,
            "body": None if in_job_row else body,
            "created_at": stored_at,
        }
        added = self.sql.keep_result.run(conn, kept, tuple(kept)).first()
        if in_job_row and added is None:
            conn.execute(self.sql.clear_kept_body, {"b_execution_id": job.execution_id})

    def stored_result(self, execution_id: str) -> tuple[str, str, Any] | None:
        """(outcome, error, body) of an execution's terminal answer, if one was ever stored
        and is still kept (in `results`, or in the job row that holds that execution)."""
        holder = (jobs.c.id == results.c.job_id) & (jobs.c.execution_id == results.c.execution_id)
        body = sa.func.coalesce(results.c.body, answers.c.body).label("body")
        query = (
            sa.select(results.c.outcome, results.c.error, body)
            .select_from(
                results.outerjoin(jobs, holder).outerjoin(answers, answers.c.job_id == jobs.c.id)
            )
            .where(results.c.execution_id == execution_id)
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None or row.body is None:  # never stored, or expired since
            return None
        return row.outcome, row.error, json.loads(row.body)

    def next_poll_due_in(self, pipelines: list[str]) -> float | None:
        """Seconds until the earliest status poll is due (<= 0: now); None: none."""
        return self.due_in(jobs.c.next_poll_at, JobState.SUBMITTED, pipelines)


def _answer(decision: Decision, body: Any) -> str | None:
    """The answer a poll's decision stores with its job, as JSON (None: it stores none)."""
    if body is None or decision.state is not JobState.RESULT_STORED:
        return None
    return json.dumps(body)
