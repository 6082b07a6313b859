"""An API outage of one pipeline, as pure values: nothing reaches the API (connection refused,
DNS, TLS, a connect timeout, a gateway's 502/503 page).

While it lasts the pipeline neither uploads nor polls; the prober (probe.py) asks the API the
harmless question of `check-config --online` at growing intervals, and the first answer ends
the outage. No document pays for it: its attempts are refunded and its polls wait. The
clocks are passed in: `monotonic` for the probes, the database's for the executions the
outage kept us from seeing end (`Blind`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime

FIRST_PROBE_SECONDS = 1.0
PROBE_GROWTH = 2.0
KEPT_WINDOWS = 16  # an execution outlives at most a few outages; older windows are dropped


def probe_gap(probes: int, cap_seconds: float) -> float:
    """Seconds between probe `probes` and the next: 1, 2, 4, ... up to `cap_seconds`."""
    return min(cap_seconds, FIRST_PROBE_SECONDS * PROBE_GROWTH ** min(probes, 30))


@dataclass(frozen=True)
class Outage:
    reason: str  # the last error: what the API's absence looked like
    since: float  # monotonic
    began_at: float  # the database's clock, as executions' submission times are
    next_probe_at: float  # monotonic
    probes: int = 0

    @classmethod
    def begin(cls, reason: str, now: float, clock_now: float, cap_seconds: float) -> Outage:
        return cls(reason, now, clock_now, now + probe_gap(0, cap_seconds))

    def probed(self, reason: str, now: float, cap_seconds: float) -> Outage:
        """A probe found the API still out of reach: the next one waits longer."""
        probes = self.probes + 1
        return replace(
            self, reason=reason, probes=probes, next_probe_at=now + probe_gap(probes, cap_seconds)
        )

    def age(self, now: float) -> float:
        return max(0.0, now - self.since)

    def describe(self) -> str:
        """For people (`status`, /healthz, `run --once`): since when, and what it looks like."""
        since = datetime.fromtimestamp(self.began_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"the API is unreachable since {since}: {self.reason}"


@dataclass(frozen=True)
class Blind:
    """Spans of the database's clock in which a pipeline could not see its executions end.
    An execution that was running during one ended at some unknown point of it: what the
    pipeline learns of its executions' time must not come from such an execution."""

    windows: tuple[tuple[float, float], ...] = ()

    def after(self, start: float, end: float) -> Blind:
        return Blind((*self.windows, (start, end))[-KEPT_WINDOWS:])

    def hides(self, submitted_at: float, asked_at: float, ongoing: float | None = None) -> bool:
        """Whether an execution submitted at `submitted_at` and seen ended at `asked_at` ran
        through a window (`ongoing`: the start of one that has not ended yet)."""
        windows = self.windows if ongoing is None else (*self.windows, (ongoing, math.inf))
        return any(start < asked_at and end > submitted_at for start, end in windows)

    def unseen_seconds(self, since: float, now: float, ongoing: float | None = None) -> float:
        """How much of the span from `since` to `now` fell in windows (an execution's age
        that no poll could see: it does not count against its deadline)."""
        windows = self.windows if ongoing is None else (*self.windows, (ongoing, math.inf))
        return sum(max(0.0, min(end, now) - max(start, since)) for start, end in windows)
