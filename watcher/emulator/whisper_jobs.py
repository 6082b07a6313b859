"""Whisper jobs and the two generations of status answers (section 2.2 of the fact sheet).

A job's phase follows from the clock: accepted for the first quarter of `processing_seconds`,
then processing (the legacy generation reports a `stage_*` status for the second half), then
processed or failed. `StatusDialect` turns a phase into the status the chosen generation
reports, with its HTTP code and body, for both `whisper-status` and `whisper-retrieve`.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .responses import Response, json_response
from .whisper_options import WhisperOptions
from .whisper_results import WhisperResult

# Section 2.2 documents only the `stage_*` pattern; the stage name is the emulator's.
LEGACY_STAGE_STATUS = "stage_extraction"
WEBHOOK_GAVE_UP_STATUS = "webhook_retries_exceeded"
NOT_FOUND_MESSAGE = "Whisper job not found for the provided whisper hash"
ALREADY_DELIVERED_MESSAGE = "Whisper already delivered"


class Phase(StrEnum):
    """Where a whisper is, independent of how a generation names it."""

    ACCEPTED = "accepted"  # queued; no worker has it yet
    PROCESSING = "processing"  # a worker is extracting pages
    STAGED = "staged"  # the page pipeline runs (legacy: a stage_* status)
    PROCESSED = "processed"  # the text is ready to retrieve
    FAILED = "failed"  # extraction failed; `Whisper.error` says why
    RETRIEVED = "retrieved"  # the text was handed out once and deleted


class StatusGeneration(StrEnum):
    """Which documented set of status answers the emulator gives."""

    CURRENT = "current"  # variant A: accepted/processing/processed/error/retrieved, 400 unknown
    LEGACY = "legacy"  # variant B (seed page): stage_*, failed, 200 unknown, 400 retrieved/error_*


_ALIASES = {"a": StatusGeneration.CURRENT, "b": StatusGeneration.LEGACY}
_MESSAGES = {
    Phase.ACCEPTED: "Whisper Job Accepted",
    Phase.PROCESSING: "Whisper Job Processing",
    Phase.STAGED: "Whisper Job Processing",
    Phase.PROCESSED: "Whisper Job Processed",
    Phase.RETRIEVED: "Whisper Job Retrieved",
}


def parse_generation(value: str) -> StatusGeneration:
    """`current`/`legacy`, or the fact sheet's variant letters `A`/`B`; ValueError otherwise."""
    lowered = value.lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    try:
        return StatusGeneration(lowered)
    except ValueError:
        raise ValueError(f"unknown status generation {value!r}: use current or legacy") from None


def _http_date(epoch: float | None) -> str | None:
    """RFC 1123, as in "Mon, 10 Feb 2025 10:40:53 GMT"."""
    return None if epoch is None else email.utils.formatdate(epoch, usegmt=True)


@dataclass
class Whisper:
    """One submitted document; its phase follows from the clock."""

    hash: str
    key: str
    options: WhisperOptions
    size: int
    total_pages: int
    requested_pages: int
    created_at: float
    processing_from: float
    staged_from: float
    finishes_at: float | None  # None: stalled, never finishes
    error: str | None  # set: the whisper fails with this message
    result: WhisperResult | None  # dropped once retrieved
    retrieved_at: float | None = None
    webhook_gave_up: bool = False  # its webhook failed every retry (section 4.4)

    def phase(self, now: float) -> Phase:
        if self.retrieved_at is not None:
            return Phase.RETRIEVED
        if now < self.processing_from:
            return Phase.ACCEPTED
        if self.finishes_at is None or now < self.finishes_at:
            return Phase.PROCESSING if now < self.staged_from else Phase.STAGED
        return Phase.FAILED if self.error is not None else Phase.PROCESSED

    def finished_at(self, now: float) -> float | None:
        """When it became processed or failed; None while it runs."""
        if self.finishes_at is None or now < self.finishes_at:
            return None
        return self.finishes_at

    def pages_done(self, now: float) -> int:
        if self.error is not None or self.finishes_at is None or now < self.processing_from:
            return 0
        span = self.finishes_at - self.processing_from
        if now >= self.finishes_at or span <= 0:
            return self.requested_pages
        return int(self.requested_pages * (now - self.processing_from) / span)

    def record(self, now: float) -> dict[str, Any]:
        """The `whisper-detail` body (section 4.1); it outlives the retrieved text."""
        finished = self.finished_at(now)
        return {
            "whisper_hash": self.hash,
            "mode": self.options.mode,
            "tag": self.options.tag,
            "total_pages": self.total_pages,
            "requested_pages": self.requested_pages,
            "processed_pages": self.pages_done(now),
            "processing_started_at": _http_date(self.created_at),
            "completed_at": _http_date(finished),
            "processing_time_in_seconds": round((finished or now) - self.created_at, 2),
            "upload_file_size_in_kb": round(self.size / 1024, 3),
        }

    def detail(self, now: float) -> list[dict[str, Any]]:
        """Section 2.1: one entry per extracted page, growing while it runs."""
        span = (self.finishes_at or self.processing_from) - self.processing_from
        seconds = math.ceil(span / max(self.requested_pages, 1))
        return [
            {"page_no": page, "message": "extraction_success", "execution_time_in_seconds": seconds}
            for page in range(1, self.pages_done(now) + 1)
        ]


@dataclass(frozen=True)
class StatusDialect:
    """How one status generation names phases and answers; the legacy fields pick among the
    variants the seed page allows (section 2.2)."""

    generation: StatusGeneration = StatusGeneration.CURRENT
    legacy_failed_status: str = "failed"  # or an `error_*` status, answered with 400
    legacy_retrieved_status: str = "retrieved"  # 400; or the deprecated `delivered`, 200

    def __post_init__(self) -> None:
        failed = self.legacy_failed_status
        if failed != "failed" and not (failed.startswith("error_") and len(failed) > 6):
            raise ValueError("legacy_failed_status must be 'failed' or start with 'error_'")
        if self.legacy_retrieved_status not in ("retrieved", "delivered"):
            raise ValueError("legacy_retrieved_status must be 'retrieved' or 'delivered'")

    @property
    def legacy(self) -> bool:
        return self.generation is StatusGeneration.LEGACY

    def status_of(self, phase: Phase, webhook_gave_up: bool = False) -> str:
        if phase is Phase.PROCESSED and webhook_gave_up and self.legacy:
            return WEBHOOK_GAVE_UP_STATUS
        if phase is Phase.FAILED:
            return self.legacy_failed_status if self.legacy else "error"
        if phase is Phase.RETRIEVED:
            return self.legacy_retrieved_status if self.legacy else "retrieved"
        if phase is Phase.STAGED:
            return LEGACY_STAGE_STATUS if self.legacy else "processing"
        return phase.value

    def http_code(self, status: str) -> int:
        """The seed page lists `error_*` and `retrieved` under 400; all else is 200."""
        legacy_400 = status == "retrieved" or status.startswith("error_")
        return 400 if self.legacy and legacy_400 else 200

    def status_response(self, whisper: Whisper | None, now: float) -> Response:
        """The `whisper-status` answer for a job, or for an unknown hash."""
        if whisper is None:
            if self.legacy:
                return json_response(200, {"status": "unknown", "message": NOT_FOUND_MESSAGE})
            return json_response(400, {"message": NOT_FOUND_MESSAGE})
        phase = whisper.phase(now)
        status = self.status_of(phase, whisper.webhook_gave_up)
        message = whisper.error if phase is Phase.FAILED else _MESSAGES[phase]
        code = self.http_code(status)
        if self.legacy and code == 200 and phase is not Phase.FAILED:
            return json_response(200, {"status": status})  # the seed's minimal body
        body: dict[str, Any] = {"status": status, "message": message}
        if not self.legacy:
            body["detail"] = whisper.detail(now)
        return json_response(code, body)

    def unknown_retrieve(self) -> Response:
        """`whisper-retrieve` for an unknown hash: the two doc pages disagree (section 3.3),
        so each generation answers as one of them."""
        if self.legacy:
            return json_response(400, {"message": "Whisper not found"})
        return json_response(404, {"message": "Whisper job unknown"})

    def retrieve_refusal(self, whisper: Whisper, now: float) -> Response | None:
        """Section 3.3: why `whisper-retrieve` hands out nothing, or None when it may."""
        phase = whisper.phase(now)
        if phase is Phase.RETRIEVED:
            return json_response(400, {"message": ALREADY_DELIVERED_MESSAGE})
        if phase is not Phase.PROCESSED:
            return json_response(400, {"message": f"Whisper not ready : {self.status_of(phase)}"})
        return None
