"""What the pipeline needs from a remote API, whatever the API: submit a document, poll it,
and turn its stored answer into the document's result.

Each API kind has one module that implements `Backend` and turns every HTTP answer and
transport error into one of the small outcome values below, and a `ResultFormat` that says
what a stored terminal answer means for the document's files and rows. The decisions about
jobs (`watcher.jobs`) read only these values, so they test without sockets; output, finish,
export and the commands read only `ResultFormat`, so they never name an API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the pure core does not load the HTTP layer
    from watcher.http import Streamed


class SubmitKind(StrEnum):
    ACCEPTED = "accepted"  # the server created an execution; its id is in the outcome
    RETRY = "retry"  # nothing was created (429, a failed staging): try again later
    # Nothing reached the API (refused, DNS, TLS, connect timeout, a gateway's 502/503 page):
    # an outage of the pipeline, not a fault of the document.
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"  # an execution may exist (cut off after sending, 500, 504)
    DOCUMENT_FAILED = "document_failed"  # the server refuses this document for good (400)
    PIPELINE_BROKEN = "pipeline_broken"  # key, URL or deployment is wrong (401/403/404)


class PollKind(StrEnum):
    RUNNING = "running"  # PENDING/EXECUTING (HTTP 422 on today's servers): poll again
    READY = "ready"  # finished; the result must be fetched with a separate, read-once call
    COMPLETED = "completed"  # the document's result is in the body (read once: store it now)
    FAILED = "failed"  # terminal failure of this document; error says why
    RESULT_GONE = "result_gone"  # 406 or COMPLETED with message null: results consumed/expired
    RETRY = "retry"  # a read cut off, a 500 or 504: no side effect, poll again later
    UNREACHABLE = "unreachable"  # as SubmitKind.UNREACHABLE: the pipeline's outage
    PIPELINE_BROKEN = "pipeline_broken"  # 401/403/404 of the deployment
    LOST = "lost"  # the server does not know this execution id
    # An execution of several files ended without this file's own answer (the server skipped
    # it, or the execution failed as a whole): send the document again on its own.
    UNANSWERED = "unanswered"


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


class CheckKind(StrEnum):
    OK = "ok"  # the API answered and accepted the key
    REFUSED = "refused"  # the key, URL or deployment is refused (as PIPELINE_BROKEN)
    UNREACHABLE = "unreachable"  # nothing reached the API (as SubmitKind.UNREACHABLE)
    UNEXPECTED = "unexpected"  # something answered, but not as this API does


@dataclass(frozen=True)
class CheckOutcome:
    """What a harmless call (no execution created, no credits spent) found about a
    pipeline's URL and key: `check-config --online`, the daemon's start, an outage's probes."""

    kind: CheckKind
    found: str  # in words for people: what answered, or why it did not

    @property
    def ok(self) -> bool:
        return self.kind is CheckKind.OK


@dataclass(frozen=True)
class Upload:
    """One document as it goes over the wire: the bytes that were hashed, and their name.

    A `Streamed` content is read while it is sent; when it raises (the file changed), the
    request is abandoned before its last byte and `submit` raises that exception."""

    file_name: str
    content: bytes | Streamed
    content_type: str


@dataclass(frozen=True)
class DocumentResult:
    """One document's part of a stored terminal answer, as its result file holds it."""

    result: Any = None
    metadata: Any = None
    # Keys of the result file after the common ones, in this order (an API's own names).
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SideFile:
    """A file written beside a success's result file: `<source><suffix>`, holding `content`."""

    suffix: str
    content: bytes


class ResultFormat(Protocol):
    """What one API kind's stored answers mean for a document; needs no key and no network.

    `kind` is the API's name as result files carry it (`"backend"`). `usage` is the metadata
    block holding the API's usage and cost figures, if its answers have one. `file_outcomes`
    says what an execution's answer means for each of its files (`shared`: the execution
    carried several documents, so each is matched by its exact name).
    """

    @property
    def kind(self) -> str: ...

    def document(
        self, body: Any, file_name: str, execution_id: str | None, success: bool
    ) -> DocumentResult: ...

    def usage(self, body: Any, file_name: str) -> Any: ...

    def file_outcomes(
        self, answer: PollOutcome, file_names: Sequence[str], shared: bool
    ) -> tuple[PollOutcome, ...]: ...

    def side_files(self, body: Any) -> tuple[SideFile, ...]: ...

    @property
    def side_suffixes(self) -> tuple[str, ...]:
        """The suffixes of the side files a success may have (kept aside with its result)."""
        ...

    def export_cells(self, document: Mapping[str, Any], result_file: Path) -> dict[str, Any]: ...


# A read-once call for the result of an execution that a poll found READY.
Fetch = Callable[[str, str], PollOutcome]


class Backend(Protocol):
    """One remote API. Implementations never raise for HTTP or network trouble; what an
    upload's content raises while it is read goes through (see `Upload`).

    `poll` says where an execution stands. An API whose results come from a separate,
    read-once call (LLMWhisperer's retrieve) answers READY and has a `fetch` that makes the
    call; an API that delivers results in its status answer never answers READY and has no
    `fetch` (None). Both are given the uploaded file name, to pick this document's part of
    the answer. `submit_files` sends several documents as one execution (an API that takes
    one document per request has `files_per_execution` 1 and is never given more), and
    `poll_execution` asks about an execution as a whole: `results.file_outcomes` then says
    what it means for each file. `check` proves the URL and the key without creating
    anything or spending credits. `results` reads the answers this backend stores.
    """

    name: str
    files_per_execution: int

    @property
    def results(self) -> ResultFormat: ...

    @property
    def fetch(self) -> Fetch | None: ...

    def submit(self, upload: Upload) -> SubmitOutcome: ...

    def submit_files(self, uploads: Sequence[Upload]) -> SubmitOutcome: ...

    def poll(self, execution_id: str, file_name: str) -> PollOutcome: ...

    def poll_execution(self, execution_id: str) -> PollOutcome: ...

    def check(self) -> CheckOutcome: ...

    def close(self) -> None: ...
