"""Jobs: their states, the allowed transitions, and the pure decisions that move them.

"Given this API answer, what happens to the job" and "how long until the next try" live here as
functions of plain values: no clock, no I/O, no database. A `Decision` says what to write and
what to do next (which loops to wake, what the pipeline learns, what to log and count); the
loops record it and carry it out without looking at the answer again.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from watcher.backend import PollKind, PollOutcome, SubmitKind, SubmitOutcome
from watcher.files import TooLarge
from watcher.filters import as_text
from watcher.schedule import RetryPolicy, backoff_seconds, next_poll_seconds


class JobState(StrEnum):
    QUEUED = "queued"  # stable and hashed; waits for an upload worker (and next_attempt_at)
    SUBMITTING = "submitting"  # claimed by an upload worker; the POST may be on the wire
    SUBMITTED = "submitted"  # the server accepted it; execution_id recorded; being polled
    FETCHING = "fetching"  # a read-once result is being fetched; if cut off, poll to see
    RESULT_STORED = "result_stored"  # outcome and server body stored in the row; file not written
    DONE = "done"  # result file written, source kept, moved or deleted
    FAILED = "failed"  # error file written; an operator may retry it
    SKIPPED = "skipped"  # the file vanished or changed before upload; last_error says which
    HELD = "held"  # the upload's outcome is unknown and the policy is "hold": an operator decides


# Every state write in watcher/store is checked against this table (store.statements.moved).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTING}),
    JobState.SUBMITTING: frozenset(
        {
            JobState.SUBMITTED,
            JobState.QUEUED,
            JobState.RESULT_STORED,
            JobState.SKIPPED,
            JobState.HELD,
        }
    ),
    JobState.SUBMITTED: frozenset(
        {JobState.SUBMITTED, JobState.FETCHING, JobState.RESULT_STORED, JobState.QUEUED}
    ),
    JobState.FETCHING: frozenset({JobState.SUBMITTED, JobState.RESULT_STORED, JobState.QUEUED}),
    JobState.RESULT_STORED: frozenset({JobState.DONE, JobState.FAILED}),
    # An earlier content back at its path (A -> B -> A): its kept answer is written again,
    # or, the answer dropped, it is sent again.
    JobState.DONE: frozenset({JobState.RESULT_STORED, JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.RESULT_STORED}),
    JobState.SKIPPED: frozenset({JobState.QUEUED}),
    JobState.HELD: frozenset({JobState.QUEUED}),  # an operator's retry
}
IN_FLIGHT = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.FETCHING)
UNFINISHED = (*IN_FLIGHT, JobState.QUEUED, JobState.RESULT_STORED)

Outcome = Literal["success", "failed"]


class ResultFile(StrEnum):
    """Where a finished job's result (or error) file is."""

    AT_PATH = "at_path"  # under the path's own name (`a.pdf.json`)
    KEPT = "kept"  # a later document of the same name took it: kept as `a.pdf.<id>.json`
    REPLACED = "replaced"  # a later document's replaced it (on_reused_name = "replace")
    SUPERSEDED = "superseded"  # none written: a newer version's result was there first


def can_move(source: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[source]


@dataclass(frozen=True)
class Job:
    """One document version: a row of the job table, frozen at the store's boundary."""

    id: int
    pipeline: str
    relative_path: str
    sha256: str
    size: int
    mtime_ns: int
    state: JobState
    attempts: int
    execution_id: str | None
    poll_count: int
    outcome: Outcome | None
    result_body: Any
    last_http_status: int | None
    last_error: str
    lease_owner: str | None
    created_at: float
    submitted_at: float | None
    updated_at: float
    finished_at: float | None = None
    pack_id: int | None = None  # set for every job of a claim that packed several together
    alone: bool = False  # its packed execution gave it no answer: send it on its own
    answer_dropped_at: float | None = None  # the stored answer expired (the result file has it)
    cost_in_dollars: float | None = None  # kept from the answer when it was dropped
    version: int | None = None  # its place among the contents of its path (highest: current)
    result_file: ResultFile | None = None  # where its result file went; None: not written

    @property
    def shares_execution(self) -> bool:
        """Claimed with others for one execution: its answer is matched by exact name."""
        return self.pack_id is not None

    @property
    def file_name(self) -> str:
        return self.relative_path.rsplit("/", 1)[-1]

    @property
    def display_path(self) -> str:
        """The relative path as text for people and JSON: bytes that are not UTF-8 as \\xNN."""
        return as_text(self.relative_path)

    @property
    def upload_name(self) -> str:
        """The name sent to the API and matched in its answer: valid UTF-8, bad bytes as U+FFFD."""
        raw = self.file_name.encode("utf-8", errors="surrogateescape")
        return raw.decode("utf-8", errors="replace")


class Wake(StrEnum):
    """Idle loops that a recorded decision gives work to."""

    UPLOADS = "uploads"  # a job is queued again, or a slot of max_in_flight came free
    POLLS = "polls"  # an execution id was recorded
    FINISHER = "finisher"  # an outcome was stored
    PROBE = "probe"  # the API is out of reach: the prober takes over the pipeline


class PipelineChange(StrEnum):
    """What an answer says about the pipeline as a whole."""

    ACCEPTED = "accepted"  # an upload got through: one more at once, and any pause is over
    RATE_LIMITED = "rate_limited"  # 429: fewer uploads at once
    PAUSE = "pause"  # the key, URL or deployment is refused: no uploads for a while
    OUTAGE = "outage"  # nothing reaches the API: no uploads or polls until a probe gets through


@dataclass(frozen=True)
class LogLine:
    level: Literal["info", "warning", "error"]
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What to do with a job after an answer: what to record, and what to do next."""

    state: JobState
    delay_seconds: float = 0.0  # until the next upload attempt or the next poll
    error: str = ""
    outcome: Outcome | None = None
    execution_id: str | None = None
    refund_attempt: bool = False  # the attempt does not count (the pipeline was at fault)
    alone: bool = False  # send it on its own next time (its packed execution did not answer it)
    result_body: Any = None  # the terminal answer, stored with the state (it is read once)
    # What the loop carries out once the decision is recorded:
    pipeline_change: PipelineChange | None = None
    pause_reason: str = ""
    ended: bool = False  # the execution had ended when asked: its duration is learnt
    wakes: frozenset[Wake] = frozenset()
    logs: tuple[LogLine, ...] = ()
    error_kind: str | None = None  # counted in errors_total
    retry_stage: str | None = None  # counted in retries_total

    @property
    def pause_pipeline(self) -> bool:
        return self.pipeline_change is PipelineChange.PAUSE


@dataclass(frozen=True)
class StoredCopy:
    """An outcome another instance already read and stored for the same execution."""

    outcome: Outcome
    error: str
    body: Any


# Due again this soon: the pipeline's outage keeps its uploads and polls back meanwhile, and
# they go as soon as a probe gets through.
OUT_OF_REACH_RECHECK_SECONDS = 1.0
FINISH = frozenset({Wake.FINISHER})
ENDED_KINDS = (PollKind.COMPLETED, PollKind.FAILED, PollKind.READY, PollKind.UNANSWERED)
ENDED = frozenset({Wake.FINISHER, Wake.UPLOADS})  # an outcome to write, a slot came free


def decide_before_upload(job: Job, policy: RetryPolicy) -> Decision | None:
    """Only interrupted uploads (a crash, a drain cut off) get past max_attempts: each restart
    counts one, and a document that kills the process must not loop forever."""
    if job.attempts > policy.max_attempts:
        last = job.last_error or "interrupted"
        return failed_before_upload(
            f"gave up after {job.attempts - 1} attempts; last error: {last}"
        )
    return None


def decide_unreadable(problem: OSError, limit_bytes: int) -> Decision:
    """The document could not be read for its upload."""
    if isinstance(problem, FileNotFoundError):
        reason = "the file was removed before it could be uploaded"
        return _skipped(reason, "file vanished before upload")
    if isinstance(problem, TooLarge):
        error = f"the file has {problem.size} bytes, over max_file_bytes = {limit_bytes}"
        return failed_before_upload(error)
    return failed_before_upload(f"cannot read the file: {problem.strerror or problem}")


def decide_content(job: Job, content_sha256: str, size: int) -> Decision | None:
    """None if the bytes read are the ones that were hashed, and there are some."""
    if content_sha256 != job.sha256:
        return decide_changed()
    if not size:
        return failed_before_upload("the file is empty")
    return None


def decide_changed(while_sending: bool = False) -> Decision:
    """The bytes are no longer the ones that were hashed: the new content is queued anew.
    Found while sending, the upload was abandoned before its last byte (never recorded as
    sent)."""
    if while_sending:
        reason = "the file changed while it was uploaded; the upload was abandoned and the new"
        return _skipped(f"{reason} content is queued anew", "file changed during upload")
    reason = "the file changed before upload; the new content is queued anew"
    return _skipped(reason, "file changed before upload")


def failed_before_upload(error: str) -> Decision:
    """Failed without an upload this time: the claim's attempt is refunded, so an empty file
    shows 0 attempts, and a given-up one the uploads it really had."""
    line = LogLine("warning", "document failed before upload", {"error": error})
    return Decision(
        JobState.RESULT_STORED,
        error=error,
        outcome="failed",
        refund_attempt=True,
        error_kind="bad_file",
        wakes=FINISH,
        logs=(line,),
    )


def _skipped(reason: str, event: str) -> Decision:
    return Decision(JobState.SKIPPED, error=reason, logs=(LogLine("info", event),))


def decide_after_submit(
    outcome: SubmitOutcome,
    attempts: int,
    policy: RetryPolicy,
    rng: random.Random,
    expected: float | None = None,
    probe: float | None = None,
) -> Decision:
    """`probe`: the fraction of `expected` at which to first poll, for a probe (Estimate)."""
    kind = outcome.kind
    if kind is SubmitKind.ACCEPTED:
        first = next_poll_seconds(0.0, 0, expected, policy, probe)
        line = LogLine("info", "submitted", {"execution_id": outcome.execution_id})
        return Decision(
            JobState.SUBMITTED,
            first,
            execution_id=outcome.execution_id,
            pipeline_change=PipelineChange.ACCEPTED,
            wakes=frozenset({Wake.POLLS}),
            logs=(line,),
        )
    if kind is SubmitKind.DOCUMENT_FAILED:
        error = f"the API refused the document: {outcome.error}"
        return _upload_failed("document refused by the API", error)
    if kind is SubmitKind.UNREACHABLE:
        return _upload_out_of_reach(outcome, attempts, policy, rng)
    if kind is SubmitKind.PIPELINE_BROKEN:
        reason = outcome.error or f"HTTP {outcome.http_status}"
        return Decision(
            JobState.QUEUED,
            policy.paused_recheck_seconds,
            outcome.error,
            refund_attempt=True,
            pipeline_change=PipelineChange.PAUSE,
            pause_reason=reason,
            error_kind="pipeline_refused",
        )
    if kind is SubmitKind.UNKNOWN and policy.on_unknown_outcome == "hold":
        line = LogLine(
            "error", "upload outcome unknown; job held for an operator", {"error": outcome.error}
        )
        return Decision(
            JobState.HELD,
            error=f"upload outcome unknown ({outcome.error}); held",
            error_kind="upload_held",
            logs=(line,),
        )
    if outcome.rate_limited:
        # The server is full, not the document at fault: back off without using up attempts.
        delay = max(
            backoff_seconds(1 + min(attempts, 5), policy, rng), outcome.retry_after_seconds or 0.0
        )
        decision = Decision(
            JobState.QUEUED,
            delay,
            outcome.error,
            refund_attempt=True,
            pipeline_change=PipelineChange.RATE_LIMITED,
        )
        return _upload_again(decision, outcome, "rate_limited")
    if attempts >= policy.max_attempts:
        error = f"gave up after {attempts} attempts; last error: {outcome.error}"
        return _upload_failed("document failed: its uploads did not get through", error)
    decision = Decision(JobState.QUEUED, backoff_seconds(attempts, policy, rng), outcome.error)
    return _upload_again(
        decision, outcome, "upload_unknown" if kind is SubmitKind.UNKNOWN else "upload"
    )


def _upload_out_of_reach(
    outcome: SubmitOutcome, attempts: int, policy: RetryPolicy, rng: random.Random
) -> Decision:
    """The pipeline's outage begins. Nothing sent (no HTTP answer): not the document's
    attempt, it goes once the API answers. A gateway's page came after the request went out:
    the document may be what broke the server (a worker killed by it), so that upload counts,
    and waits its backoff; the outage holds every other upload back, so an outage of any
    length costs a document at most the one upload that met it."""
    outage = _out_of_reach(outcome.error)
    if outcome.http_status is None:
        return replace(outage, state=JobState.QUEUED, refund_attempt=True)
    if attempts >= policy.max_attempts:
        error = f"gave up after {attempts} attempts; last error: {outcome.error}"
        failed = _upload_failed("document failed: its uploads did not get through", error)
        return replace(
            failed,
            pipeline_change=PipelineChange.OUTAGE,
            pause_reason=outcome.error,
            wakes=failed.wakes | outage.wakes,
            error_kind="api_unreachable",
        )
    delay = backoff_seconds(attempts, policy, rng)
    return replace(outage, state=JobState.QUEUED, delay_seconds=delay)


def _out_of_reach(error: str) -> Decision:
    """The API did not get the request: the pipeline is in an outage (it says so itself)."""
    return Decision(
        JobState.SUBMITTED,
        OUT_OF_REACH_RECHECK_SECONDS,
        error,
        pipeline_change=PipelineChange.OUTAGE,
        pause_reason=error,
        wakes=frozenset({Wake.PROBE}),
        error_kind="api_unreachable",
    )


def _upload_failed(headline: str, error: str) -> Decision:
    line = LogLine("warning", headline, {"error": error})
    return replace(_failed(error), wakes=FINISH, logs=(line,))


def _upload_again(decision: Decision, outcome: SubmitOutcome, error_kind: str) -> Decision:
    line = LogLine(
        "warning",
        "upload failed; will retry",
        {
            "http_status": outcome.http_status,
            "error": outcome.error,
            "outcome_unknown": outcome.kind is SubmitKind.UNKNOWN,
            "retry_in_seconds": round(decision.delay_seconds, 1),
        },
    )
    return replace(decision, error_kind=error_kind, retry_stage="upload", logs=(line,))


def needs_stored_copy(outcome: PollOutcome) -> bool:
    """The server says the result is gone: another instance may have read and kept it."""
    return outcome.kind in (PollKind.RESULT_GONE, PollKind.LOST)


def decide_after_poll(
    outcome: PollOutcome,
    job: Job,
    elapsed_seconds: float,
    policy: RetryPolicy,
    rng: random.Random,
    expected: float | None = None,
    *,
    fetched: bool = False,
    stored: StoredCopy | None = None,
) -> Decision:
    """After a status poll (or, `fetched`, a read-once fetch); `stored` is another
    instance's copy of the outcome, looked up when `needs_stored_copy`."""
    decision = _poll_decision(outcome, job, elapsed_seconds, policy, rng, expected, stored)
    if outcome.kind is PollKind.RETRY:
        decision = replace(decision, error_kind="poll", retry_stage="poll")
        if decision.state is JobState.SUBMITTED:
            line = LogLine(
                "warning", "status poll failed; will poll again", {"error": outcome.error}
            )
            decision = replace(decision, logs=(*decision.logs, line))
    # Ended by the time we asked: the answer's round trip is not execution time.
    ended = fetched or outcome.kind in ENDED_KINDS
    return replace(decision, ended=ended)


def _poll_decision(
    outcome: PollOutcome,
    job: Job,
    elapsed_seconds: float,
    policy: RetryPolicy,
    rng: random.Random,
    expected: float | None,
    stored: StoredCopy | None,
) -> Decision:
    kind = outcome.kind
    if kind is PollKind.COMPLETED:
        success = Decision(JobState.RESULT_STORED, outcome="success", result_body=outcome.body)
        return _execution_ended(success, outcome)
    if kind is PollKind.FAILED:
        failed = _failed(outcome.error or f"execution {outcome.server_status}")
        return _execution_ended(replace(failed, result_body=outcome.body), outcome)
    if kind in (PollKind.RESULT_GONE, PollKind.LOST):
        return _result_gone(outcome, job, policy, rng, stored)
    if kind is PollKind.UNANSWERED:
        return _execution_ended(_unanswered(outcome, job, policy), outcome)
    if kind is PollKind.UNREACHABLE:
        return _out_of_reach(outcome.error)  # polled again as soon as a probe gets through
    if kind is PollKind.PIPELINE_BROKEN:
        return Decision(
            JobState.SUBMITTED,
            policy.paused_recheck_seconds,
            outcome.error,
            pipeline_change=PipelineChange.PAUSE,
            pause_reason=outcome.error,
            error_kind="pipeline_refused",
        )
    if elapsed_seconds > policy.execution_deadline_seconds:
        return _execution_ended(
            _failed(
                f"execution {job.execution_id} did not finish within "
                f"{policy.execution_deadline_seconds:.0f} s (last status {outcome.server_status})"
            ),
            outcome,
        )
    delay = next_poll_seconds(elapsed_seconds, job.poll_count, expected, policy)
    return Decision(JobState.SUBMITTED, delay, outcome.error)


def _result_gone(
    outcome: PollOutcome,
    job: Job,
    policy: RetryPolicy,
    rng: random.Random,
    stored: StoredCopy | None,
) -> Decision:
    if stored is not None:
        line = LogLine("info", "result already read by another instance; using its stored copy")
        kept = Decision(
            JobState.RESULT_STORED,
            error=stored.error,
            outcome=stored.outcome,
            result_body=stored.body,
            logs=(line,),
        )
        return _execution_ended(kept, outcome)
    error = f"{outcome.error}; submitting again"
    if job.attempts >= policy.max_attempts:
        return _execution_ended(_give_up(error, job.attempts), outcome)
    line = LogLine("warning", "result is gone from the server; submitting again", {"error": error})
    return Decision(
        JobState.QUEUED,
        backoff_seconds(job.attempts, policy, rng),
        error,
        wakes=frozenset({Wake.UPLOADS}),
        logs=(line,),
    )


def _unanswered(outcome: PollOutcome, job: Job, policy: RetryPolicy) -> Decision:
    """Its packed execution gave no answer of its own: no verdict on the document, so it
    goes again alone (its attempt counts: a document is never sent more than max_attempts)."""
    if job.attempts >= policy.max_attempts:
        return _give_up(outcome.error, job.attempts)
    line = LogLine(
        "warning",
        "no answer for this document in its shared execution; submitting it again alone",
        {"error": outcome.error},
    )
    return Decision(
        JobState.QUEUED, error=outcome.error, alone=True, execution_id=None, logs=(line,)
    )


def _execution_ended(decision: Decision, outcome: PollOutcome) -> Decision:
    line = LogLine(
        "info", "execution ended", {"outcome": decision.outcome, "status": outcome.server_status}
    )
    return replace(decision, wakes=ENDED, logs=(*decision.logs, line))


def _failed(error: str) -> Decision:
    return Decision(JobState.RESULT_STORED, error=error, outcome="failed")


def _give_up(error: str, attempts: int) -> Decision:
    return _failed(f"gave up after {attempts} attempts; last error: {error}")
