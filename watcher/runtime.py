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

    def apply(self, change: PipelineChange | None, reason: str, delay_seconds: float) -> None:
        """What an answer taught about the pipeline as a whole."""
        if change is PipelineChange.ACCEPTED:
            self.on_accepted()
            if self.paused_reason:  # the API takes our uploads again: the pause is over
                self.resume()
        elif change is PipelineChange.RATE_LIMITED:
            self.on_rate_limited()
        elif change is PipelineChange.PAUSE:
            self.pause(reason, delay_seconds)

    def is_paused(self, now: float | None = None) -> bool:
        return self.paused_until > (time.monotonic() if now is None else now)

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
