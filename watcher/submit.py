"""Upload workers: claim a queued job, send the bytes that were hashed, record the answer."""

from __future__ import annotations

import hashlib
import mimetypes
import random
import threading

from watcher.backend import SubmitOutcome, Upload
from watcher.context import ContextLoop, LastLook, Live
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


def read_for_upload(job: Job, pipeline: Pipeline) -> tuple[bytes, Decision | None]:
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
            self._put_back(job)

    def _claim(self, limits: dict[str, int]) -> list[Job]:
        return self.store.claim_execution_for_upload(self.owner, limits, self._packing())

    def _packing(self) -> dict[str, int]:
        """Documents per execution, for the pipelines that may pack several."""
        return {
            name: p.backend.files_per_execution
            for name, p in list(self.pipelines.items())
            if p.backend.files_per_execution > 1
        }

    def _put_back(self, job: Job) -> None:
        """A claimed job that will not be sent now goes back to the queue, attempt refunded."""
        self.store.record_submit(job, Decision(JobState.QUEUED, refund_attempt=True), None)

    def _take(self, claim: list[Job], claim_next: bool) -> tuple[list[Job], bool]:
        """Upload the claimed jobs of one execution; return the next claim if made
        meanwhile, and whether to claim straight away otherwise."""
        pipeline = self.pipelines.get(claim[0].pipeline)
        if pipeline is None:  # removed by a reload since the claim
            for job in claim:
                self._put_back(job)
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
        content, unsent = read_for_upload(job, pipeline)
        if unsent is not None:
            if self.store.record_submit(job, unsent, None):
                self.carry_out(unsent, pipeline)
            return [], True
        content_type = upload_content_type(job.file_name)
        log.debug("uploading", bytes=len(content), content_type=content_type, attempt=job.attempts)
        outcome = pipeline.backend.submit(Upload(job.upload_name, content, content_type))
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
        ready = [
            (job, content)
            for job, content in zip(claim, self._contents(claim), strict=True)
            if content
        ]
        if not ready:
            return
        crash_point("pack_claimed")
        files = [Upload(j.upload_name, c, upload_content_type(j.file_name)) for j, c in ready]
        log.debug("uploading", documents=len(files), bytes=sum(len(c) for _, c in ready))
        outcome = self.pipeline.backend.submit_files(files)
        crash_point("after_post")
        pack = [job for job, _ in ready]
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

    def _contents(self, claim: list[Job]) -> list[bytes]:
        """Each document's bytes; b"" for one that will not go (recorded as decided)."""
        contents = []
        for job in claim:
            with about(job):
                content, unsent = read_for_upload(job, self.pipeline)
                if unsent is not None:
                    if self.store.record_submit(job, unsent, None):
                        self.uploader.carry_out(unsent, self.pipeline)
                    content = b""
            contents.append(content)
        return contents

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
