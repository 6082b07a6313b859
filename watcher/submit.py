"""Upload workers: claim a queued job, send the bytes that were hashed, record the answer."""

from __future__ import annotations

import hashlib
import mimetypes
import random
import threading

from watcher.backend import Upload
from watcher.context import ContextLoop, Live
from watcher.crashpoints import crash_point
from watcher.files import read_regular_file
from watcher.jobs import (
    Decision,
    Job,
    JobState,
    decide_after_submit,
    decide_before_upload,
    decide_content,
    decide_unreadable,
)
from watcher.logs import about, get_logger
from watcher.runtime import Pipeline

log = get_logger()
MAX_IDLE_SECONDS = 2.0


# What the Unstract server accepts (unstract-api-behaviour.md section 3); it silently skips any
# other declared type, so those go as application/octet-stream and the server sniffs them.
ACCEPTED_TYPES = {
    "text/plain",
    "application/pdf",
    "image/jpeg",
    "image/png",
    "image/tiff",
    "image/bmp",
    "image/gif",
    "image/webp",
    "application/json",
    "text/csv",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.ms-excel.sheet.macroenabled.12",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
}


def upload_content_type(file_name: str) -> str:
    guessed = mimetypes.guess_type(file_name)[0]
    return guessed if guessed in ACCEPTED_TYPES else "application/octet-stream"


class Uploader(ContextLoop):
    """One upload worker's loop. Several share the store, the pipelines and the wake-ups."""

    def __init__(self, live: Live, index: int = 0) -> None:
        super().__init__(live)
        self.name = f"upload-{index}"
        self.rng = random.Random()

    def run(self, stop: threading.Event) -> None:
        # The last claim found work, or new work or a free slot woke us: claim straight
        # away. Otherwise a read first: no write lock while there is nothing to do.
        go = False
        job: Job | None = None  # claimed, not yet sent
        while not stop.is_set():
            self.beat()
            if job is None:
                limits = self._limits()
                wait = 0.0 if go else self._idle_wait(limits)
                job = self.store.claim_for_upload(self.owner, limits) if wait <= 0 else None
            if job is None:
                # Due work we could not claim means every pipeline is at max_in_flight: a
                # freed slot wakes us (WorkSignal), so wait long.
                go = self.wakes.work.wait(MAX_IDLE_SECONDS if wait <= 0 else wait)
                continue
            job, go = self._take(job, claim_next=not stop.is_set())
        if job is not None:  # claimed with the last upload's answer, never sent
            self._put_back(job)

    def _put_back(self, job: Job) -> None:
        """A claimed job that will not be sent now goes back to the queue, attempt refunded."""
        self.store.record_submit(job, Decision(JobState.QUEUED, refund_attempt=True), None)

    def _take(self, job: Job, claim_next: bool) -> tuple[Job | None, bool]:
        """Upload a claimed job; return the next one if claimed meanwhile, and whether to
        claim straight away otherwise."""
        pipeline = self.pipelines.get(job.pipeline)
        if pipeline is None:  # removed by a reload since the claim
            self._put_back(job)
            return None, True
        with about(job):
            return self.upload(job, pipeline, claim_next)

    def _idle_wait(self, limits: dict[str, int]) -> float:
        """Until the next retry is due; new work wakes one worker sooner. Other instances'
        work and freed slots are noticed within MAX_IDLE_SECONDS."""
        due_in = self.store.next_attempt_due_in(list(limits)) if limits else None
        return MAX_IDLE_SECONDS if due_in is None else min(MAX_IDLE_SECONDS, due_in)

    def _limits(self) -> dict[str, int]:
        return {
            # list(): a reload may swap pipelines while we look (the copy is atomic in CPython)
            name: p.in_flight_limit()
            for name, p in list(self.pipelines.items())
            if not p.is_paused()
        }

    def upload(
        self, job: Job, pipeline: Pipeline, claim_next: bool = True
    ) -> tuple[Job | None, bool]:
        """Send the document, record the answer; return the worker's next job if it was
        claimed with the answer (only when `claim_next`), and whether to claim straight away
        otherwise."""
        content, unsent = self._read(job, pipeline)
        if unsent is not None:
            if self.store.record_submit(job, unsent, None):
                self.carry_out(unsent, pipeline)
            return None, True
        content_type = upload_content_type(job.file_name)
        log.debug("uploading", bytes=len(content), content_type=content_type, attempt=job.attempts)
        outcome = pipeline.backend.submit(Upload(job.upload_name, content, content_type))
        crash_point("after_post")
        decision = decide_after_submit(
            outcome, job.attempts, pipeline.policy, self.rng, pipeline.expected_execution_seconds
        )
        recorded, next_job, tried = self._record(job, decision, outcome.http_status, claim_next)
        if recorded:
            self.metrics.uploads.labels(pipeline.name, outcome.kind.value).inc()
            if outcome.rate_limited:
                self.metrics.rate_limited.labels(pipeline.name).inc()
            self.carry_out(decision, pipeline)
        else:
            log.warning(
                "lost the claim on this job while uploading; another worker has it",
                execution_id=outcome.execution_id,
            )
        return next_job, not tried

    def _record(
        self, job: Job, decision: Decision, http_status: int | None, claim_next: bool
    ) -> tuple[bool, Job | None, bool]:
        """(recorded, the next job, whether one was looked for): an accepted upload is
        recorded together with the next claim, in one transaction."""
        limits = self._limits()
        if decision.state is not JobState.SUBMITTED or not claim_next or not limits:
            return self.store.record_submit(job, decision, http_status), None, False
        recorded, next_job = self.store.record_submit_and_claim(
            job, decision, http_status, self.owner, limits
        )
        return recorded, next_job, True

    def _read(self, job: Job, pipeline: Pipeline) -> tuple[bytes, Decision | None]:
        """The document's bytes, or the decision not to send it: too many attempts, or the
        bytes are gone, unreadable, empty or no longer the ones that were hashed."""
        too_many = decide_before_upload(job, pipeline.policy)
        if too_many is not None:
            return b"", too_many
        limit = pipeline.config.max_file_bytes
        try:
            content = read_regular_file(pipeline.placement.source(job), limit)
        except OSError as exc:
            return b"", decide_unreadable(exc, limit)
        digest = hashlib.sha256(content).hexdigest()
        return content, decide_content(job, digest, len(content))
