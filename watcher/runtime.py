"""A pipeline as the running daemon holds it: its config, its API client, and its pause state."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from watcher.backend import Backend
from watcher.config import PipelineConfig
from watcher.jobs import RetryPolicy
from watcher.logs import get_logger
from watcher.output import Placement
from watcher.unstract import UnstractClient

log = get_logger()


@dataclass
class Pipeline:
    config: PipelineConfig
    backend: Backend
    policy: RetryPolicy
    placement: Placement
    paused_until: float = 0.0
    paused_reason: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.config.name

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
            self.paused_reason = reason
            self.paused_until = time.monotonic() + seconds

    def resume(self) -> None:
        with self._lock:
            if self.paused_reason:
                log.info("pipeline resumed", pipeline=self.name)
            self.paused_reason = ""
            self.paused_until = 0.0


def build_pipeline(config: PipelineConfig) -> Pipeline:
    api = config.api
    backend = UnstractClient(
        api.url,
        api.resolve_key(),
        tags=api.tags,
        include_metadata=api.include_metadata,
        connect_timeout=api.connect_timeout_seconds,
        read_timeout=api.read_timeout_seconds,
        max_connections=api.max_in_flight + 4,
    )
    policy = RetryPolicy(
        max_attempts=api.max_attempts,
        poll_initial_seconds=api.poll_initial_seconds,
        poll_max_seconds=api.poll_max_seconds,
        execution_deadline_seconds=api.execution_deadline_seconds,
    )
    placement = Placement(
        watch_dir=config.watch_dir.resolve(),
        output_dir=Path(config.output_dir).resolve() if config.output_dir != "" else None,
        after_success=config.after_success,
        archive_dir=Path(config.archive_dir).resolve() if config.archive_dir != "" else None,
    )
    return Pipeline(config, backend, policy, placement)
