"""Jobs: their states, the allowed transitions, and the pure decisions that move them.

"Given this API answer, what happens to the job" and "how long until the next try" live here as
functions of plain values: no clock, no I/O, no database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from watcher.backend import PollKind, PollOutcome, SubmitKind, SubmitOutcome
from watcher.filters import as_text

EARLY_FRACTION = 0.9  # first poll a little before the typical execution time
STEP_FRACTION = 0.1  # then a poll every 10 % of it ...
LATE_FACTOR = 2.0  # ... until twice the typical time has passed
GROWTH = 0.5  # after that, wait half the execution's age
MIN_POLL_GAP_SECONDS = 0.02
EWMA_WEIGHT = 0.2  # how much one execution moves the typical execution time
SHRINK_FACTOR = 0.9  # ended by its first poll: try the next first poll a little earlier


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
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.SKIPPED: frozenset({JobState.QUEUED}),
    JobState.HELD: frozenset({JobState.QUEUED}),  # an operator's retry
}
IN_FLIGHT = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.FETCHING)
UNFINISHED = (*IN_FLIGHT, JobState.QUEUED, JobState.RESULT_STORED)

Outcome = Literal["success", "failed"]


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
    answer_dropped_at: float | None = None  # the stored answer expired (the result file has it)
    cost_in_dollars: float | None = None  # kept from the answer when it was dropped

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


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base_seconds: float = 2.0
    backoff_cap_seconds: float = 300.0
    poll_initial_seconds: float = 0.25
    poll_max_seconds: float = 30.0
    poll_growth: float = 1.6
    execution_deadline_seconds: float = 6 * 3600.0
    paused_recheck_seconds: float = 60.0
    # An upload whose outcome is unknown (timeout or connection lost after sending):
    # "resubmit" risks a second execution, "hold" waits for an operator.
    on_unknown_outcome: Literal["resubmit", "hold"] = "resubmit"


@dataclass(frozen=True)
class Decision:
    """What to do with a job after an answer: its next state and what to record."""

    state: JobState
    delay_seconds: float = 0.0  # until the next upload attempt or the next poll
    error: str = ""
    outcome: Outcome | None = None
    execution_id: str | None = None
    pause_pipeline: bool = False  # the key, URL or deployment is wrong: stop this pipeline
    refund_attempt: bool = False  # the attempt does not count (the pipeline was at fault)


def backoff_seconds(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter, for attempt 1, 2, ..."""
    ceiling = min(policy.backoff_cap_seconds, policy.backoff_base_seconds * 2 ** (attempt - 1))
    return rng.uniform(ceiling / 2, ceiling)


def poll_delay_seconds(poll_count: int, policy: RetryPolicy) -> float:
    """Gap before poll number `poll_count + 1`: short at first, growing for long executions."""
    delay = policy.poll_initial_seconds * policy.poll_growth**poll_count
    return min(policy.poll_max_seconds, delay)


def next_poll_seconds(
    elapsed: float, poll_count: int, expected: float | None, policy: RetryPolicy
) -> float:
    """Seconds until the next poll of an execution submitted `elapsed` seconds ago.

    Without an estimate, gaps grow from poll_initial_seconds. With `expected` (how long this
    pipeline's executions typically take), the first poll comes a little before that, then
    short steps until well past it, then growing gaps again for the odd long one. Counting
    from the submission, not from the last answer, keeps the schedule from drifting.
    """
    if expected is None:
        return poll_delay_seconds(poll_count, policy)
    early = EARLY_FRACTION * expected
    if elapsed < early:
        return max(MIN_POLL_GAP_SECONDS, early - elapsed)
    if elapsed < LATE_FACTOR * expected + policy.poll_initial_seconds:
        step = STEP_FRACTION * expected
        return min(policy.poll_max_seconds, max(MIN_POLL_GAP_SECONDS, step))
    return min(policy.poll_max_seconds, max(policy.poll_initial_seconds, GROWTH * elapsed))


def updated_estimate(
    expected: float | None, ended_by: float, polled_before: float | None, shrink: bool = False
) -> float:
    """A pipeline's typical execution time, after an execution was seen ended when asked
    `ended_by` seconds after its submission.

    After a poll that saw it running (`polled_before`), it ended in between: the middle of
    the two is averaged in (so the estimate does not creep upward by how late polls run).
    Ended by its first poll, which comes a little before the estimate, it took at most
    `ended_by`: the estimate drops to that at once, which follows a service that got faster
    within a few documents. With `shrink` it drops a step more: only an earlier first poll
    can tell whether executions are faster still, and without it the estimate would settle
    at the reconciler's own lateness / (1 - EARLY_FRACTION). The caller shrinks at most once
    per typical execution time, so executions that ended side by side, which all say the
    same, do not pull it down once each.
    """
    if polled_before is None:
        bound = ended_by if expected is None else min(expected, ended_by)
        return SHRINK_FACTOR * bound if shrink else bound
    sample = (max(0.0, polled_before) + ended_by) / 2
    return sample if expected is None else expected + EWMA_WEIGHT * (sample - expected)


def decide_after_submit(
    outcome: SubmitOutcome,
    attempts: int,
    policy: RetryPolicy,
    rng: random.Random,
    expected: float | None = None,
) -> Decision:
    if outcome.kind is SubmitKind.ACCEPTED:
        first = next_poll_seconds(0.0, 0, expected, policy)
        return Decision(JobState.SUBMITTED, first, execution_id=outcome.execution_id)
    if outcome.kind is SubmitKind.DOCUMENT_FAILED:
        return _failed(f"the API refused the document: {outcome.error}")
    if outcome.kind is SubmitKind.PIPELINE_BROKEN:
        return Decision(
            JobState.QUEUED,
            policy.paused_recheck_seconds,
            outcome.error,
            pause_pipeline=True,
            refund_attempt=True,
        )
    if outcome.kind is SubmitKind.UNKNOWN and policy.on_unknown_outcome == "hold":
        return Decision(JobState.HELD, error=f"upload outcome unknown ({outcome.error}); held")
    if outcome.rate_limited:
        # The server is full, not the document at fault: back off without using up attempts.
        delay = max(backoff_seconds(1 + min(attempts, 5), policy, rng),
                    outcome.retry_after_seconds or 0.0)  # fmt: skip
        return Decision(JobState.QUEUED, delay, outcome.error, refund_attempt=True)
    return _again_or_give_up(outcome.error, attempts, policy, rng)


def decide_after_poll(
    outcome: PollOutcome,
    job: Job,
    elapsed_seconds: float,
    policy: RetryPolicy,
    rng: random.Random,
    expected: float | None = None,
) -> Decision:
    kind = outcome.kind
    if kind is PollKind.COMPLETED:
        return Decision(JobState.RESULT_STORED, outcome="success")
    if kind is PollKind.FAILED:
        return _failed(outcome.error or f"execution {outcome.server_status}")
    if kind in (PollKind.RESULT_GONE, PollKind.LOST):
        return _again_or_give_up(f"{outcome.error}; submitting again", job.attempts, policy, rng)
    if kind is PollKind.PIPELINE_BROKEN:
        return Decision(
            JobState.SUBMITTED, policy.paused_recheck_seconds, outcome.error, pause_pipeline=True
        )
    if elapsed_seconds > policy.execution_deadline_seconds:
        return _failed(
            f"execution {job.execution_id} did not finish within "
            f"{policy.execution_deadline_seconds:.0f} s (last status {outcome.server_status})"
        )
    delay = next_poll_seconds(elapsed_seconds, job.poll_count, expected, policy)
    return Decision(JobState.SUBMITTED, delay, outcome.error)


def _failed(error: str) -> Decision:
    return Decision(JobState.RESULT_STORED, error=error, outcome="failed")


def _again_or_give_up(
    error: str, attempts: int, policy: RetryPolicy, rng: random.Random
) -> Decision:
    if attempts >= policy.max_attempts:
        return _failed(f"gave up after {attempts} attempts; last error: {error}")
    return Decision(JobState.QUEUED, backoff_seconds(attempts, policy, rng), error)
