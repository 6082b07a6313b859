"""What the pipeline needs from a remote API, whatever the API: submit a document, poll it.

Each API kind (`watcher.unstract`, later `watcher.llmwhisperer`) implements `Backend` and turns
every HTTP answer and transport error into one of the small outcome values below. The decisions
about jobs (`watcher.jobs`) read only these values, so they test without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class SubmitKind(StrEnum):
    ACCEPTED = "accepted"  # the server created an execution; its id is in the outcome
    RETRY = "retry"  # nothing was created (refused, 429, a gateway's 502/503): try again later
    UNKNOWN = "unknown"  # an execution may exist (cut off after sending, 500, 504)
    DOCUMENT_FAILED = "document_failed"  # the server refuses this document for good (400)
    PIPELINE_BROKEN = "pipeline_broken"  # key, URL or deployment is wrong (401/403/404)


class PollKind(StrEnum):
    RUNNING = "running"  # PENDING/EXECUTING (HTTP 422 on today's servers): poll again
    READY = "ready"  # finished; the result must be fetched with a separate, read-once call
    COMPLETED = "completed"  # the document's result is in the body (read once: store it now)
    FAILED = "failed"  # terminal failure of this document; error says why
    RESULT_GONE = "result_gone"  # 406 or COMPLETED with message null: results consumed/expired
    RETRY = "retry"  # transport error, 5xx, proxy page: no side effect, poll again later
    PIPELINE_BROKEN = "pipeline_broken"  # 401/403/404 of the deployment
    LOST = "lost"  # the server does not know this execution id


# What a refusal of the pipeline itself means, in the same words for every API kind (the
# pause reason, `status`, `check-config --online`); the server's own text follows in brackets.
REFUSALS = {
    401: "the API key was refused",
    402: "the account has no pages or credits left",
    403: "the API key is missing or not allowed for this API",
    404: "no API at this URL (a wrong or removed deployment, or a wrong base URL)",
    422: "the deployment is inactive",
}


def refusal(http_status: int, server_text: str) -> str:
    """Why the API refused the pipeline: ours first, then the server's words."""
    reason = REFUSALS.get(http_status, "the API refused the pipeline")
    said = f": {server_text}" if server_text and server_text != f"HTTP {http_status}" else ""
    return f"{reason} (HTTP {http_status}{said})"


@dataclass(frozen=True)
class SubmitOutcome:
    kind: SubmitKind
    execution_id: str | None = None
    http_status: int | None = None
    error: str = ""
    rate_limited: bool = False
    retry_after_seconds: float | None = None  # the server's Retry-After, if it sent one


@dataclass(frozen=True)
class PollOutcome:
    kind: PollKind
    server_status: str | None = None
    http_status: int | None = None
    error: str = ""
    body: Any = None  # the decoded JSON body of a terminal answer, stored as it came


@dataclass(frozen=True)
class CheckOutcome:
    """What a harmless call (no execution created, no credits spent) found about a
    pipeline's URL and key: `check-config --online`."""

    ok: bool
    found: str  # in words for people: what answered, or why it did not


@dataclass(frozen=True)
class Upload:
    """One document as it goes over the wire: the bytes that were hashed, and their name."""

    file_name: str
    content: bytes
    content_type: str


class Backend(Protocol):
    """One remote API. Implementations never raise for HTTP or network trouble.

    `poll` says where an execution stands; for an API whose results come from a separate,
    read-once call (LLMWhisperer's retrieve) it answers READY and `fetch` makes that call.
    Both are given the uploaded file name, to pick this document's part of the answer.
    `check` proves the URL and the key without creating anything or spending credits.
    """

    name: str

    def submit(self, upload: Upload) -> SubmitOutcome: ...

    def poll(self, execution_id: str, file_name: str) -> PollOutcome: ...

    def fetch(self, execution_id: str, file_name: str) -> PollOutcome: ...

    def check(self) -> CheckOutcome: ...

    def close(self) -> None: ...
