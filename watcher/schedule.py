"""How long until the next try: the retry policy, upload backoff, and the poll schedule that
follows how long a pipeline's executions typically take. Pure functions of plain values."""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, replace
from typing import Literal

FIRST_MARGIN = 0.02  # first poll a little after the typical execution time ...
STEP_FRACTION = 0.05  # then polls at steps of 5 % of it, each half as long again as the last
STEP_GROWTH = 1.5  # (an estimate a little short costs a short step, a long run few polls) ...
LATE_FACTOR = 2.0  # ... until twice the typical time has passed
GROWTH = 0.5  # after that, wait half the execution's age
MIN_POLL_GAP_SECONDS = 0.02
EWMA_WEIGHT = 0.2  # how much one execution that ran past the estimate moves it up
PROBE_EVERY = 8  # one execution in this many is first polled early: did the service get faster?
PROBE_START = 0.9  # a probe asks at this fraction of the estimate; closer after it saw running,
PROBE_CLOSEST = 0.97  # ... down to a step of 3 %,
PROBE_FARTHEST = 0.5  # ... and twice as far below after it saw one ended, down to half
# The first execution is polled at growing gaps, so when it ended is known only roughly: the
# first estimate leans to where it was last seen running, so that the next executions are
# polled a short step early (and move the estimate up) rather than a whole gap late.
FIRST_LEAN = 0.25


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
    elapsed: float,
    poll_count: int,
    expected: float | None,
    policy: RetryPolicy,
    probe: float | None = None,
) -> float:
    """Seconds until the next poll of an execution submitted `elapsed` seconds ago.

    Without an estimate, gaps grow from poll_initial_seconds. With `expected` (how long this
    pipeline's executions typically take), the first poll comes just after that (a probe's
    first poll at the fraction `probe` of it), then steps that start at 5 % of it and grow
    until well past it (an execution a little longer than the estimate is found a short step
    late), then growing gaps again for the odd long one. Counting from the submission, not
    from the last answer, keeps the schedule from drifting.
    """
    if expected is None:
        return poll_delay_seconds(poll_count, policy)
    first = (1 + FIRST_MARGIN) * expected
    if probe is not None and poll_count == 0:
        first = probe * expected
    if elapsed < first:
        return max(MIN_POLL_GAP_SECONDS, first - elapsed)
    if elapsed < LATE_FACTOR * expected + policy.poll_initial_seconds:
        step = STEP_FRACTION * expected * STEP_GROWTH ** _steps_taken(elapsed - first, expected)
        return min(policy.poll_max_seconds, max(MIN_POLL_GAP_SECONDS, step))
    return min(policy.poll_max_seconds, max(policy.poll_initial_seconds, GROWTH * elapsed))


def _steps_taken(past_first: float, expected: float) -> int:
    """How many steps past the first poll's time fit in `past_first` seconds (counted by
    time, not by polls: an execution polled before its pipeline had an estimate has polls
    that are no steps)."""
    first_step = STEP_FRACTION * expected
    if past_first <= 0 or first_step <= 0:
        return 0
    # The steps' sum: first_step * (GROWTH^k - 1) / (GROWTH - 1); a hair of slack for floats.
    fitted = math.log(1 + past_first * (STEP_GROWTH - 1) / first_step, STEP_GROWTH)
    return int(fitted + 1e-9)


def is_probe(execution_id: str | None) -> bool:
    """Whether this execution is one of the few first polled early. A function of its id, so
    that the submission (which schedules the poll) and the poll (which learns from it) agree
    without keeping a list."""
    if execution_id is None:
        return False
    return zlib.crc32(execution_id.encode()) % PROBE_EVERY == 0


@dataclass(frozen=True)
class Estimate:
    """How long a pipeline's executions typically take, learnt from when polls saw them
    running and ended, and how far below it the next probe asks.

    The first poll comes just after the estimate, so that most executions need one poll and
    none waits a step. That poll says nothing when it finds the execution ended (it took at
    most the estimate, which is known), so one execution in PROBE_EVERY is first polled
    early (a probe): ended by then, the estimate drops to the probe's time, the next probe
    asks twice as far below and every execution is a probe until one finds its execution
    running; then the estimate holds and the next probe asks closer. An execution that runs
    past the estimate moves it up (a moving average of the middle between the poll that saw
    it running and the one that saw it ended).
    """

    seconds: float | None = None
    probe_fraction: float = PROBE_START
    probed_at: float = float("-inf")  # when a probe last taught something
    # Every execution a probe: the last probe found its execution ended (or the first
    # execution was, by its first poll), so probes cost no poll and the estimate can fall fast.
    eager: bool = False

    def probe_for(self, execution_id: str | None) -> float | None:
        """The fraction of the estimate at which to first poll this execution, if a probe."""
        if self.seconds is None or not (self.eager or is_probe(execution_id)):
            return None
        return self.probe_fraction

    def after(
        self, ended_by: float, polled_before: float | None, probe: bool, now: float
    ) -> Estimate:
        """The estimate after an execution was seen ended `ended_by` seconds after its
        submission, last seen running `polled_before` seconds after it (None: by its first
        poll). Probes that ended side by side all say the same: one per estimate's time
        counts (`now` on any clock that does not jump)."""
        expected = self.seconds
        if expected is None:
            if polled_before is None:  # at most that: probe every execution, far below
                return Estimate(ended_by, PROBE_FARTHEST, eager=True)
            return replace(self, seconds=_middle(ended_by, polled_before, FIRST_LEAN))
        if polled_before is not None and polled_before >= expected:  # ran past the estimate
            sample = _middle(ended_by, polled_before)
            return replace(self, seconds=expected + EWMA_WEIGHT * (sample - expected))
        if not probe:  # ended by a poll after the estimate: it took at most that
            return replace(self, seconds=min(expected, ended_by))
        if now - self.probed_at < expected:
            return self
        fraction = self.probe_fraction
        if polled_before is None:  # the probe found it ended: faster, maybe faster still
            seconds = min(fraction * expected, ended_by)
            return Estimate(seconds, max(PROBE_FARTHEST, 2 * fraction - 1), now, eager=True)
        return Estimate(expected, min(PROBE_CLOSEST, (1 + fraction) / 2), now)


def _middle(ended_by: float, polled_before: float | None, lean: float = 0.5) -> float:
    """Ended between the poll that saw it running and the one that saw it ended: a point
    `lean` of the way between them."""
    if polled_before is None:
        return ended_by
    start = max(0.0, polled_before)
    return start + lean * (ended_by - start)
