"""Execution state and the Status API answer for it (sections 5.3 and 8)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .responses import Response, json_response
from .results import FileResult, Shaping, shape_results


class Status(StrEnum):
    """Execution states (section 5.3)."""

    PENDING = "PENDING"  # queued, no worker yet
    EXECUTING = "EXECUTING"  # a worker is processing the files
    COMPLETED = "COMPLETED"  # done; at least one file succeeded
    STOPPED = "STOPPED"  # interrupted before completion
    ERROR = "ERROR"  # every file failed, or staging failed


TERMINAL = frozenset({Status.COMPLETED, Status.STOPPED, Status.ERROR})


@dataclass
class Execution:
    """One execution; its status follows from the clock and the deployment's settings."""

    id: str
    org: str
    status_api: str | None
    created_at: float
    pending_until: float
    finishes_at: float | None  # None: stalled
    outcome: Status
    results: list[FileResult] | None
    error: str | None = None
    acknowledged: bool = False
    forced: Status | None = None
    forced_at: float = 0.0

    def status(self, now: float) -> Status:
        if self.forced is not None:
            return self.forced
        if now < self.pending_until:
            return Status.PENDING
        if self.finishes_at is None or now < self.finishes_at:
            return Status.EXECUTING
        return self.outcome

    def terminal_since(self, now: float) -> float | None:
        if self.forced is not None:
            return self.forced_at
        return self.finishes_at if self.status(now) in TERMINAL else None

    def consume(self, now: float, ttl: float) -> tuple[bool, Status, list[FileResult] | None]:
        """Read as the Status API does (section 8): terminal results are handed out once."""
        was_acknowledged = self.acknowledged
        status = self.status(now)
        since = self.terminal_since(now)
        if since is None:
            return was_acknowledged, status, None
        results = self.results if now <= since + ttl else None
        self.results = None
        self.acknowledged = True
        return was_acknowledged, status, results


def status_response(
    was_acknowledged: bool,
    status: Status,
    results: list[FileResult] | None,
    shaping: Shaping,
) -> Response:
    """Section 8, steps 3-7 (the TOOL_IMAGE_NOT_FOUND 500 is never produced here)."""
    if was_acknowledged:
        return json_response(
            406, {"status": status.value, "message": "Result already acknowledged"}
        )
    if status is Status.COMPLETED:
        message = shape_results(results, shaping) if results else None
        return json_response(200, {"status": status.value, "message": message})
    # ERROR and STOPPED come back unstripped; PENDING/EXECUTING never carry results.
    return json_response(422, {"status": status.value, "message": results or None})
