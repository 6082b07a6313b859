"""How long until the next try: the retry policy, upload backoff, and the poll schedule that
follows how long a pipeline's executions typically take. Pure functions of plain values."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

EARLY_FRACTION = 0.9  # first poll a little before the typical execution time
STEP_FRACTION = 0.1  # then a poll every 10 % of it ...
LATE_FACTOR = 2.0  # ... until twice the typical time has passed
GROWTH = 0.5  # after that, wait half the execution's age
MIN_POLL_GAP_SECONDS = 0.02
EWMA_WEIGHT = 0.2  # how much one execution moves the typical execution time
SHRINK_FACTOR = 0.9  # ended by its first poll: try the next first poll a little earlier


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
