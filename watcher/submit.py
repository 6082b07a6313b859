"""Upload workers: claim a queued job, send the bytes that were hashed, record the answer."""

from __future__ import annotations

import mimetypes
import random
import threading
from contextlib import ExitStack

from watcher.backend import SubmitOutcome, Upload
from watcher.context import ContextLoop, LastLook, Live
from watcher.crashpoints import crash_point
from watcher.document_stream import Abandoned, DocumentStream, open_document
from watcher.jobs import (
    Decision,
    Job,
    JobState,
    decide_after_submit,
    decide_before_upload,
)
from watcher.logs import about, about_execution, get_logger
from watcher.packs import decide_after_pack_submit, file_rounds
from watcher.runtime import Pipeline

log = get_logger()
MAX_IDLE_SECONDS = 2.0  # the lookout (upload-0): other instances' work, slots freed by them
HELPER_MAX_IDLE_SECONDS = 10.0  # the others: well under the hung-loop limit (3 leases of > 10 s)


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


def open_for_upload(job: Job, pipeline: Pipeline) -> DocumentStream | Decision:
    """The document, open to be streamed, or the decision not to send it: too many
    attempts, or the file is gone, unreadable, too large or empty. Whether its bytes are
    still the ones that were hashed is checked as they are sent."""
    too_many = decide_before_upload(job, pipeline.policy)
    if too_many is not None:
        return too_many
    return open_document(job, pipeline.placement.source(job), pipeline.config.max_file_bytes)


class Uploader(ContextLoop):
    """One upload worker's loop. Several share the store, the pipelines and the wake-ups."""

    def __init__(self, live: Live, index: int = 0) -> None:
        super().__init__(live)
        self.name = f"upload-{index}"
        self.lookout = index == 0
        self.rng = random.Random()
        self.last_look = LastLook()  # of the queue, while idle

    def run(self, stop: threading.Event) -> None:
        # The last claim found work, or new work or a free slot woke us: claim straight
        # away. Otherwise a read first: no write lock while there is nothing to do.
        go = False
        claim: list[Job] = []  # the jobs of one execution, claimed, not yet sent
        while not stop.is_set():
            self.beat()
            if not claim:
                limits = self._limits()
                wait = 0.0 if go else self._idle_wait(limits)
                claim = self._claim(limits) if wait <= 0 else []
                if claim:  # there may be more: one more worker looks (a chain, not a herd)
                    self.wakes.work.set()
            if not claim:
                # Due work we could not claim means every pipeline is at max_in_flight: a
                # freed slot wakes us (WorkSignal), so wait long.
                go = self.wakes.work.wait(self._longest_wait() if wait <= 0 else wait)
                continue
            claim, go = self._take(claim, claim_next=not stop.is_set())
        for job in claim:  # claimed with the last upload's answer, never sent
            self.put_back(job)

    def _claim(self, limits: dict[str, int]) -> list[Job]:
        return self.store.claim_execution_for_upload(self.owner, limits, self._packing())

    def _packing(self) -> dict[str, int]:
        """Documents per execution, for the pipelines that may pack several."""
        return {
            name: p.backend.files_per_execution
            for name, p in list(self.pipelines.items())
            if p.backend.files_per_execution > 1
        }

    def put_back(self, job: Job) -> None:
        """A claimed job that will not be sent now goes back to the queue, attempt refunded."""
        self.store.record_submit(job, Decision(JobState.QUEUED, refund_attempt=True), None)

    def _take(self, claim: list[Job], claim_next: bool) -> tuple[list[Job], bool]:
        """Upload the claimed jobs of one execution; return the next claim if made
        meanwhile, and whether to claim straight away otherwise."""
        pipeline = self.pipelines.get(claim[0].pipeline)
        if pipeline is None or pipeline.outage is not None:  # removed, or out of reach since
            for job in claim:
                self.put_back(job)
            return [], True
        if len(claim) > 1:
            with about_execution(claim):
                PackedUpload(self, pipeline).upload(claim)
            return [], True
        with about(claim[0]):
            return self.upload(claim[0], pipeline, claim_next)

    def _longest_wait(self) -> float:
        # Idle, the daemon should cost nothing: one worker looks often, and whatever it
        # finds wakes the next (above), so N workers do not each read the queue every 2 s.
        return MAX_IDLE_SECONDS if self.lookout else HELPER_MAX_IDLE_SECONDS

    def _idle_wait(self, limits: dict[str, int]) -> float:
        """Until the next retry is due (every worker, exactly); new work wakes one worker
        sooner. Other instances' work and freed slots are noticed within MAX_IDLE_SECONDS by
        the lookout."""
        due_in = None
        if limits:
            due_in = self.due_in(self.last_look, self.store.next_attempt_due_in, list(limits))
        longest = self._longest_wait()
        return longest if due_in is None else min(longest, due_in)

    def _limits(self) -> dict[str, int]:
        return {
            # list(): a reload may swap pipelines while we look (the copy is atomic in CPython)
            name: p.in_flight_limit()
            for name, p in list(self.pipelines.items())
            if not p.is_paused()
        }

    def upload(
        self, job: Job, pipeline: Pipeline, claim_next: bool = True
    ) -> tuple[list[Job], bool]:
        """Send the document, record the answer; return the worker's next job if it was
        claimed with the answer (only when `claim_next`), and whether to claim straight away
        otherwise."""
        document = open_for_upload(job, pipeline)
        if isinstance(document, Decision):
            self.record_unsent(job, document, pipeline)
            return [], True
        content_type = upload_content_type(job.file_name)
        log.debug("uploading", bytes=document.size, content_type=content_type, attempt=job.attempts)
        try:
            with document:
                outcome = pipeline.backend.submit(Upload(job.upload_name, document, content_type))
        except Abandoned as stopped:
            self.record_unsent(job, stopped.decision, pipeline)
            return [], True
        crash_point("after_post")
        decision = decide_after_submit(
            outcome,
            job.attempts,
            pipeline.policy,
            self.rng,
            pipeline.expected_execution_seconds,
            pipeline.probe_for(outcome.execution_id),
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

    def record_unsent(self, job: Job, decision: Decision, pipeline: Pipeline) -> None:
        """A document not sent (or abandoned while it was sent), as decided."""
        if self.store.record_submit(job, decision, None):
            self.carry_out(decision, pipeline)

    def _record(
        self, job: Job, decision: Decision, http_status: int | None, claim_next: bool
    ) -> tuple[bool, list[Job], bool]:
        """(recorded, the next claim, whether one was looked for): an accepted upload is
        recorded together with the next claim, in one transaction."""
        limits = self._limits()
        if decision.state is not JobState.SUBMITTED or not claim_next or not limits:
            return self.store.record_submit(job, decision, http_status), [], False
        recorded, next_claim = self.store.record_submit_and_claim_execution(
            job, decision, http_status, self.owner, limits, self._packing()
        )
        return recorded, next_claim, True


class PackedUpload:
    """One upload of several documents as one execution (`files_per_execution`)."""

    def __init__(self, uploader: Uploader, pipeline: Pipeline) -> None:
        self.uploader = uploader
        self.store = uploader.store
        self.pipeline = pipeline

    def upload(self, claim: list[Job]) -> None:
        """Send the documents that can go, record the answer for all in one transaction."""
        with ExitStack() as opened:
            ready = [opened.enter_context(document) for document in self._open(claim)]
            if not ready:
                return
            crash_point("pack_claimed")
            try:
                outcome = self._send(ready)
            except Abandoned as stopped:
                self._abandoned(stopped, [document.job for document in ready])
                return
        crash_point("after_post")
        self._record([document.job for document in ready], outcome)

    def _send(self, ready: list[DocumentStream]) -> SubmitOutcome:
        files = [Upload(d.job.upload_name, d, upload_content_type(d.job.file_name)) for d in ready]
        log.debug("uploading", documents=len(files), bytes=sum(d.size for d in ready))
        return self.pipeline.backend.submit_files(files)

    def _abandoned(self, stopped: Abandoned, pack: list[Job]) -> None:
        """One document changed while the pack was sent: the request never ended, so none
        was sent; that one is decided, the others go back to the queue."""
        with about(stopped.job):
            self.uploader.record_unsent(stopped.job, stopped.decision, self.pipeline)
        for job in pack:
            if job.id != stopped.job.id:
                self.uploader.put_back(job)

    def _record(self, pack: list[Job], outcome: SubmitOutcome) -> None:
        expected = self.pipeline.expected_execution_seconds
        if expected is not None:
            expected *= file_rounds(len(pack))
        probe = self.pipeline.probe_for(outcome.execution_id)
        decisions = decide_after_pack_submit(
            outcome, pack, self.pipeline.policy, self.uploader.rng, expected, probe
        )
        recorded = self.store.record_execution_submit(
            list(zip(pack, decisions, strict=True)), outcome.http_status
        )
        self._carry_out(outcome, pack, decisions, recorded)

    def _open(self, claim: list[Job]) -> list[DocumentStream]:
        """The documents that can go, open; one that will not is recorded as decided."""
        documents = []
        for job in claim:
            with about(job):
                document = open_for_upload(job, self.pipeline)
                if isinstance(document, Decision):
                    self.uploader.record_unsent(job, document, self.pipeline)
                else:
                    documents.append(document)
        return documents

    def _carry_out(
        self,
        outcome: SubmitOutcome,
        pack: list[Job],
        decisions: list[Decision],
        recorded: list[bool],
    ) -> None:
        metrics = self.uploader.metrics
        if any(recorded):
            metrics.uploads.labels(self.pipeline.name, outcome.kind.value).inc()
            if outcome.rate_limited:
                metrics.rate_limited.labels(self.pipeline.name).inc()
        for job, decision, done in zip(pack, decisions, recorded, strict=True):
            with about(job, outcome.execution_id):
                if done:
                    self.uploader.carry_out(decision, self.pipeline)
                else:
                    log.warning("lost the claim on a packed job while uploading")
