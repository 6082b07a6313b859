"""What a notice says: the events worth a person's attention, as plain values; pure.

A notice is drafted where the state change it reports happens, and written to the outbox in
that change's transaction (see `watcher.store.outbox`); `watcher.notify` sends it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.filters import as_text
from watcher.jobs import Job

DOCUMENT_FAILED = "document_failed"
DOCUMENT_DONE = "document_done"  # only with on_success = true
PIPELINE_PAUSED = "pipeline_paused"
PIPELINE_RESUMED = "pipeline_resumed"


@dataclass(frozen=True)
class Draft:
    """A notice before it has an outbox id."""

    event: str
    pipeline: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Notice:
    """A notice in the outbox: `id` is its delivery id, the same on every retry."""

    id: int
    event: str
    pipeline: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


def document_draft(
    job: Job, document: dict[str, Any], result_file: Path, on_success: bool
) -> Draft | None:
    """The notice for a finished document: always for a failure, for a success if asked."""
    failed = job.outcome != "success"
    if not failed and not on_success:
        return None
    payload: dict[str, Any] = {
        "source": job.display_path,
        "sha256": job.sha256,
        "job_id": job.id,
        "execution_id": job.execution_id,
        "status": document["status"],
        "error": document["error"],
        "attempts": job.attempts,
        "result_file": as_text(str(result_file)),
    }
    if not failed:
        payload["result"] = document["result"]
    return Draft(DOCUMENT_FAILED if failed else DOCUMENT_DONE, job.pipeline, payload)


def pause_draft(pipeline: str, was: str, now: str) -> Draft | None:
    """A notice when a pipeline's pause begins or ends (a new reason while paused is none)."""
    if not was and now:
        return Draft(PIPELINE_PAUSED, pipeline, {"reason": now})
    if was and not now:
        return Draft(PIPELINE_RESUMED, pipeline, {"previous_reason": was})
    return None


def body(notice: Notice, fmt: str) -> bytes:
    """The POST body: our JSON, or a Slack incoming-webhook message."""
    if fmt == "slack":
        return json.dumps({"text": slack_text(notice)}, ensure_ascii=False).encode("utf-8")
    created_at = datetime.fromtimestamp(notice.created_at, UTC).isoformat()
    document = {
        "id": notice.id,
        "event": notice.event,
        "pipeline": notice.pipeline,
        "created_at": created_at,
        **notice.payload,
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def slack_text(notice: Notice) -> str:
    p = notice.payload
    where = f"pipeline *{notice.pipeline}*"
    if notice.event == DOCUMENT_FAILED:
        return f":x: {where}: `{p['source']}` failed: {p['error']}"
    if notice.event == DOCUMENT_DONE:
        return f":white_check_mark: {where}: `{p['source']}` done ({p['result_file']})"
    if notice.event == PIPELINE_PAUSED:
        return f":double_vertical_bar: {where} paused: {p['reason']}"
    return f":arrow_forward: {where} resumed"


def retry_delay(attempts: int, cap_seconds: float, jitter: float) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling from 1 s up to
    `cap_seconds`, times `jitter` (0.5..1.0, drawn by the caller)."""
    return min(cap_seconds, 2.0 ** max(0, attempts - 1)) * jitter
