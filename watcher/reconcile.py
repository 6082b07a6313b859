"""The reconciler: one loop that polls every in-flight execution when its next poll is due.

A terminal answer is stored in the job row in the same transaction that records the outcome,
before any file is written: the server hands results out once (unstract-api-behaviour.md s. 8).
"""

from __future__ import annotations

import random
import threading

from watcher.backend import PollKind
from watcher.crashpoints import crash_point
from watcher.jobs import Job, JobState, decide_after_poll
from watcher.logs import bind_job, get_logger, unbind_job
from watcher.runtime import Pipeline
from watcher.store import Store

log = get_logger()
BATCH = 64
IDLE_WAIT_SECONDS = 0.5
TERMINAL_KINDS = (PollKind.COMPLETED, PollKind.FAILED)


class Reconciler:
    def __init__(
        self,
        store: Store,
        pipelines: dict[str, Pipeline],
        stop: threading.Event,
        submitted: threading.Event,
        finished: threading.Event,
        work: threading.Event,
    ) -> None:
        self.store = store
        self.pipelines = pipelines
        self.stop = stop
        self.submitted = submitted
        self.work = work
        self.finished = finished
        self.rng = random.Random()

    def run(self) -> None:
        while not self.stop.is_set():
            self.submitted.clear()
            if not self.poll_due():
                self.submitted.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        smallest = min((p.policy.poll_initial_seconds for p in self.pipelines.values()), default=1)
        return min(IDLE_WAIT_SECONDS, smallest / 2)

    def poll_due(self) -> int:
        """Poll every execution whose next poll is due; return how many were polled."""
        due = self.store.due_polls(BATCH, list(self.pipelines))
        if not due:
            return 0
        now = self.store.now()
        for job in due:
            if self.stop.is_set():
                break
            try:
                bind_job(
                    pipeline=job.pipeline,
                    job_id=job.id,
                    path=job.display_path,
                    execution_id=job.execution_id,
                )
                self.poll(job, self.pipelines[job.pipeline], now)
            finally:
                unbind_job()
        return len(due)

    def poll(self, job: Job, pipeline: Pipeline, now: float) -> None:
        assert job.execution_id is not None
        outcome = pipeline.backend.poll(job.execution_id, job.upload_name)
        log.debug("polled", status=outcome.server_status, http_status=outcome.http_status)
        fetching = outcome.kind is PollKind.READY
        if fetching:
            # A read-once fetch: commit that it is under way, so a crash mid-fetch is known.
            if not self.store.begin_fetch(job):
                return
            outcome = pipeline.backend.fetch(job.execution_id, job.upload_name)
        if outcome.kind in TERMINAL_KINDS:
            crash_point("after_poll")
        elapsed = now - (job.submitted_at or now)
        decision = decide_after_poll(outcome, job, elapsed, pipeline.policy, self.rng)
        body = outcome.body if outcome.kind in TERMINAL_KINDS else None
        if not self.store.record_poll(job, decision, outcome.http_status, body, fetching):
            log.warning("job changed while it was polled; leaving it to its new owner")
            return
        if decision.pause_pipeline:
            pipeline.pause(outcome.error, decision.delay_seconds)
        if decision.state is JobState.RESULT_STORED:
            log.info("execution ended", outcome=decision.outcome, status=outcome.server_status)
            self.finished.set()
            self.work.set()  # a slot of max_in_flight is free again
        elif decision.state is JobState.QUEUED:
            log.warning("result is gone from the server; submitting again", error=decision.error)
            self.work.set()
        elif outcome.kind is PollKind.RETRY:
            log.warning("status poll failed; will poll again", error=outcome.error)
