"""A pipeline as the running daemon holds it: its config, its API client, and its pause state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watcher.backend import Backend
from watcher.backends import build_backend
from watcher.config import PipelineConfig
from watcher.jobs import PipelineChange
from watcher.logs import get_logger
from watcher.outage import Blind, Outage
from watcher.output import Placement
from watcher.schedule import Estimate, RetryPolicy

log = get_logger()


@dataclass
class Pipeline:
    config: PipelineConfig
    backend: Backend
    policy: RetryPolicy
    placement: Placement
    paused_until: float = 0.0
    paused_reason: str = ""
    allowed_in_flight: float = 0.0  # lowered by 429s, grows back with accepted uploads
    # How long this pipeline's executions typically take, to poll when they are likely
    # done rather than on a fixed schedule (see Estimate). Replaced whole, under the lock.
    estimate: Estimate = field(default_factory=Estimate)
    on_pause_change: Callable[[str], None] | None = None  # called with the reason, or ""
    # Nothing reaches the API: no uploads or polls until the prober gets an answer. Read
    # without the lock (one attribute load); replaced whole, under it.
    outage: Outage | None = None
    blind: Blind = field(default_factory=Blind)  # past outages, for what the estimate learns
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.allowed_in_flight = float(self.config.api.max_in_flight)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def expected_execution_seconds(self) -> float | None:
        """The typical execution time; None until one has ended."""
        return self.estimate.seconds

    def probe_for(self, execution_id: str | None) -> float | None:
        """The fraction of the estimate at which to first poll this execution, if a probe."""
        return self.estimate.probe_for(execution_id)

    def observe_execution(
        self, ended_by: float, polled_before: float | None, execution_id: str | None = None
    ) -> None:
        """An execution was seen ended when asked `ended_by` seconds after submission."""
        now = time.monotonic()
        with self._lock:
            # A probe if it would be one now (eager probing may have begun or ended since its
            # submission; either way the next probes put the estimate right).
            probe = self.estimate.probe_for(execution_id) is not None
            self.estimate = self.estimate.after(ended_by, polled_before, probe, now)

    def start_from(self, execution_seconds: float) -> None:
        """Begin with what a previous run learnt of this pipeline's executions' time, unless
        this run has learnt something already."""
        with self._lock:
            if self.estimate.seconds is None:
                self.estimate = Estimate(execution_seconds)

    def in_flight_limit(self) -> int:
        return max(1, int(self.allowed_in_flight))

    def on_rate_limited(self) -> None:
        """The server is at its concurrency limit: halve ours (AIMD, as TCP does)."""
        with self._lock:
            self.allowed_in_flight = max(1.0, self.allowed_in_flight / 2)
        log.warning(
            "API at its concurrency limit (429); fewer uploads at once",
            pipeline=self.name,
            in_flight_limit=self.in_flight_limit(),
        )

    def on_accepted(self) -> None:
        with self._lock:
            ceiling = float(self.config.api.max_in_flight)
            self.allowed_in_flight = min(
                ceiling, self.allowed_in_flight + 1 / self.allowed_in_flight
            )

    def apply(
        self, change: PipelineChange | None, reason: str, delay_seconds: float, clock_now: float
    ) -> None:
        """What an answer taught about the pipeline as a whole (`clock_now`: the database's
        clock, for an outage's start or end)."""
        if change is PipelineChange.ACCEPTED:
            self.on_accepted()
            if self.outage is not None:  # it got through: the outage is over
                self.end_outage(clock_now)
            if self.paused_reason:  # the API takes our uploads again: the pause is over
                self.resume()
        elif change is PipelineChange.RATE_LIMITED:
            self.on_rate_limited()
        elif change is PipelineChange.PAUSE:
            self.pause(reason, delay_seconds)
        elif change is PipelineChange.OUTAGE:
            self.begin_outage(reason, clock_now)

    def is_paused(self, now: float | None = None) -> bool:
        """No uploads now: refused for a while, or out of reach."""
        return self.outage is not None or self.is_refused(now)

    def is_refused(self, now: float | None = None) -> bool:
        """The API refused the key or deployment, and its recheck is not due yet."""
        return self.paused_until > (time.monotonic() if now is None else now)

    def begin_outage(self, reason: str, clock_now: float) -> bool:
        """Nothing reaches the API: stop uploads and polls until a probe gets through.
        Returns whether this began one (one warning per outage, however many answers)."""
        cap = self.config.api.outage_probe_max_seconds
        with self._lock:
            if self.outage is not None:
                return False
            self.outage = Outage.begin(reason, time.monotonic(), clock_now, cap)
        log.warning(
            "API unreachable; the pipeline waits (no document fails for it) and probes it",
            pipeline=self.name,
            reason=reason,
        )
        return True

    def probed_unreachable(self, reason: str) -> None:
        with self._lock:
            if self.outage is not None:
                cap = self.config.api.outage_probe_max_seconds
                self.outage = self.outage.probed(reason, time.monotonic(), cap)

    def end_outage(self, clock_now: float) -> Outage | None:
        """The API answered: uploads and polls go on. Returns the outage that ended."""
        with self._lock:
            outage, self.outage = self.outage, None
            if outage is not None:
                self.blind = self.blind.after(outage.began_at, clock_now)
        if outage is not None:
            log.info(
                "API reachable again; pipeline resumed",
                pipeline=self.name,
                unreachable_seconds=round(outage.age(time.monotonic()), 1),
            )
        return outage

    def saw_on_time(self, submitted_at: float, asked_at: float) -> bool:
        """Whether an execution's end could be seen when it came: it ran through no outage
        (whose end showed only once the API was back)."""
        outage = self.outage
        ongoing = outage.began_at if outage is not None else None
        return not self.blind.hides(submitted_at, asked_at, ongoing)

    def seen_age(self, submitted_at: float, now: float) -> float:
        """An execution's age less the time its API was out of reach (no poll could see it
        then): what its deadline counts."""
        outage = self.outage
        ongoing = outage.began_at if outage is not None else None
        return now - submitted_at - self.blind.unseen_seconds(submitted_at, now, ongoing)

    def unreachable_past_grace(self, now: float | None = None) -> Outage | None:
        """The outage, once it lasted longer than the pipeline tolerates (a problem then)."""
        outage = self.outage
        now = time.monotonic() if now is None else now
        if outage is None or outage.age(now) < self.config.api.outage_grace_seconds:
            return None
        return outage

    def pause(self, reason: str, seconds: float) -> None:
        """Stop uploading for a while; the first pause with a new reason is logged as an error."""
        with self._lock:
            if reason != self.paused_reason:
                log.error(
                    "pipeline paused: the API refuses this deployment or key; queued documents "
                    "wait, fix the config and reload or restart",
                    pipeline=self.name,
                    reason=reason,
                )
            changed = reason != self.paused_reason
            self.paused_reason = reason
            self.paused_until = time.monotonic() + seconds
        if changed and self.on_pause_change is not None:
            self.on_pause_change(reason)

    def resume(self) -> None:
        with self._lock:
            was_paused = bool(self.paused_reason)
            self.paused_reason = ""
            self.paused_until = 0.0
        if was_paused:
            log.info("pipeline resumed", pipeline=self.name)
            if self.on_pause_change is not None:
                self.on_pause_change("")


def build_pipeline(config: PipelineConfig) -> Pipeline:
    api = config.api
    policy = RetryPolicy(
        max_attempts=api.max_attempts,
        poll_initial_seconds=api.poll_initial_seconds,
        poll_max_seconds=api.poll_max_seconds,
        execution_deadline_seconds=api.execution_deadline_seconds,
        on_unknown_outcome=api.on_unknown_outcome,
    )
    return Pipeline(config, build_backend(api), policy, placement_for(config))


def placement_for(config: PipelineConfig) -> Placement:
    """Where a pipeline's files live (also for `export`, which needs no API key)."""
    return Placement(
        watch_dir=config.watch_dir.resolve(),
        output_dir=Path(config.output_dir).resolve() if config.output_dir != "" else None,
        after_success=config.after_success,
        archive_dir=Path(config.archive_dir).resolve() if config.archive_dir != "" else None,
        result_mode=int(config.result_file_mode, 8),
    )
