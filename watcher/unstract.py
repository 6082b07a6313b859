"""The Unstract API deployment: Execution API (POST) and Status API (GET), over http.py.

The server's answers come in two body families (unstract-api-behaviour.md section 7): execution
bodies `{"message": ...}` / `{"status": ..., "message": ...}` and exceptions
`{"type": ..., "errors": [...]}`. The status of an execution is read from the body, never from
the HTTP code alone: a running execution answers 422 (section 8). `classify_submit` and
`classify_poll` are pure and hold every such rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from watcher.api_config import ApiBase, UnstractApiConfig
from watcher.backend import (
    CheckKind,
    CheckOutcome,
    DocumentResult,
    PollKind,
    PollOutcome,
    SideFile,
    SubmitKind,
    SubmitOutcome,
    Upload,
    refusal,
)
from watcher.flatten import result_cells
from watcher.http import ApiHttp

RUNNING_STATUSES = {"PENDING", "EXECUTING", "READY", "QUEUED", "INITIATED"}
FAILED_STATUSES = {"ERROR", "STOPPED"}
# Transport errors raised before any byte of the request left: nothing can exist remotely.
# Connecting failed (refused, DNS, TLS, timeout): the API is out of reach, an outage.
UNREACHABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
# Our own pool had no free connection in time: nothing was sent, but the API may be fine.
NOT_SENT_ERRORS = (*UNREACHABLE_ERRORS, httpx.PoolTimeout)
BROKEN_PIPELINE_CODES = {401, 403, 404}
# 5xx answers that prove nothing was created: the application's own 502 is a failed
# presigned-URL download, before any execution exists (section 3), and a proxy's 502/503 page
# means it found no application to hand the request to (section 0, last row).
NOT_ACTED_ON_CODES = {502, 503}
# A failure of the server's tool runner, not of any one document (section 4).
WHOLE_EXECUTION_ERROR = "TOOL_IMAGE_NOT_FOUND"
# The nil UUID: a valid execution id that no server ever hands out, for `check`.
NO_SUCH_EXECUTION = "00000000-0000-0000-0000-000000000000"


def decode_json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def std_error_text(body: Any) -> str:
    """The details of a drf-standardized-errors body, joined; '' for any other shape."""
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return ""
    details = []
    for error in body["errors"]:
        if isinstance(error, dict):
            attr = f"{error['attr']}: " if error.get("attr") else ""
            details.append(f"{attr}{error.get('detail', '')}")
    return "; ".join(details)


def _short(content: bytes) -> str:
    return content[:200].decode("utf-8", errors="replace").strip()


def classify_submit(status_code: int, content: bytes) -> SubmitOutcome:
    """What an Execution API answer means for the document that was sent."""
    body = decode_json(content)
    error = std_error_text(body) or _short(content) or f"HTTP {status_code}"
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, dict):
        return _classify_execution_answer(status_code, message, error)
    if status_code == 429:
        return SubmitOutcome(SubmitKind.RETRY, None, status_code, error, rate_limited=True)
    if status_code in BROKEN_PIPELINE_CODES or status_code == 422:
        # 422 here is `Pipeline '...' is inactive`: the deployment, not the document (seed
        # Execution API page).
        return SubmitOutcome(
            SubmitKind.PIPELINE_BROKEN, None, status_code, refusal(status_code, error)
        )
    if status_code in (400, 413, 415):
        return SubmitOutcome(SubmitKind.DOCUMENT_FAILED, None, status_code, error)
    if status_code >= 500 and status_code not in NOT_ACTED_ON_CODES:
        # An unhandled 500 may come after the execution was created (sections 7 and 11),
        # and a gateway's 504 gave up while the server went on: it may exist.
        return SubmitOutcome(SubmitKind.UNKNOWN, None, status_code, error)
    if is_gateway_page(status_code, body):
        return SubmitOutcome(SubmitKind.UNREACHABLE, None, status_code, gateway_error(error))
    return SubmitOutcome(SubmitKind.RETRY, None, status_code, error)


def is_gateway_page(status_code: int, body: Any) -> bool:
    """A 502/503 that the application did not write (its answers are JSON objects): a proxy
    or load balancer found no server to hand the request to."""
    return status_code in NOT_ACTED_ON_CODES and not isinstance(body, dict)


def gateway_error(said: str) -> str:
    return f"the API's gateway answered: {said}"


def _classify_execution_answer(
    status_code: int, message: dict[str, Any], error: str
) -> SubmitOutcome:
    """An execution body: the server says what it did, so the outcome is never unknown."""
    if status_code == 200 and message.get("execution_id"):
        if message.get("execution_status") != "ERROR":
            return SubmitOutcome(SubmitKind.ACCEPTED, str(message["execution_id"]), status_code)
    # 422/500 (or an old server's 200): staging or dispatch failed and the execution ended in
    # ERROR; it will never give a result, so sending the document again is no duplicate.
    text = str(message.get("error") or message.get("execution_status") or error)
    return SubmitOutcome(SubmitKind.RETRY, None, status_code, text)


def classify_poll(status_code: int, content: bytes, file_name: str) -> PollOutcome:
    """What a Status API answer says about the document `file_name` of an execution."""
    return _for_file(classify_execution(status_code, content), file_name)


def classify_execution(status_code: int, content: bytes) -> PollOutcome:
    """What a Status API answer says about the execution as a whole."""
    body = decode_json(content)
    if isinstance(body, dict) and isinstance(body.get("status"), str) and "errors" not in body:
        return _classify_execution_body(status_code, body)
    error = std_error_text(body) or _short(content) or f"HTTP {status_code}"
    if status_code in (401, 403) or (status_code == 404 and "API not found" in error):
        return PollOutcome(PollKind.PIPELINE_BROKEN, None, status_code, refusal(status_code, error))
    if status_code in (400, 404) and ("does not exist" in error or "execution_id" in error):
        # The server's own answer about this id (section 8); any other 400/404, such as a
        # gateway's, is not proof that the execution is gone.
        return PollOutcome(PollKind.LOST, None, status_code, error)
    if is_gateway_page(status_code, body):
        return PollOutcome(PollKind.UNREACHABLE, None, status_code, gateway_error(error))
    return PollOutcome(PollKind.RETRY, None, status_code, error)


def _classify_execution_body(status_code: int, body: dict[str, Any]) -> PollOutcome:
    status = body["status"]
    message = body.get("message")
    if status_code == 406 or message == "Result already acknowledged":
        return PollOutcome(PollKind.RESULT_GONE, status, status_code, "result already read")
    if status == "COMPLETED":
        if message is None:
            return PollOutcome(PollKind.RESULT_GONE, status, status_code, "result expired")
        return PollOutcome(PollKind.COMPLETED, status, status_code, body=body)
    if status in FAILED_STATUSES or status_code == 500:
        return PollOutcome(PollKind.FAILED, status, status_code, _item_errors(message), body)
    # PENDING, EXECUTING, or a status this client does not know yet: still running.
    return PollOutcome(PollKind.RUNNING, status, status_code)


def _for_file(outcome: PollOutcome, file_name: str) -> PollOutcome:
    """A terminal answer holds one item per file: this document's item decides its outcome."""
    if outcome.kind not in (PollKind.COMPLETED, PollKind.FAILED):
        return outcome
    item = find_file_item(outcome.body, file_name)
    if item is None:
        error = outcome.error or (
            f"the execution ended ({outcome.server_status}) without a result for {file_name!r}"
        )
        return replace(outcome, kind=PollKind.FAILED, error=error)
    if item.get("status") != "Success" or item.get("error"):
        error = str(item.get("error") or f"file status {item.get('status')}")
        return replace(outcome, kind=PollKind.FAILED, error=error)
    return replace(outcome, kind=PollKind.COMPLETED, error="")


def shared_file_outcome(answer: PollOutcome, file_name: str) -> PollOutcome:
    """What a terminal answer of an execution of several documents means for `file_name`.

    Matched by exact name only. No item of its own (the server skipped it: same content,
    an unsupported type; or the execution stopped first) and an execution that failed as a
    whole (TOOL_IMAGE_NOT_FOUND, a failure without an error of this file) are no verdict on
    the document: it is sent again alone."""
    if answer.kind not in (PollKind.COMPLETED, PollKind.FAILED):
        return answer
    item = exact_file_item(answer.body, file_name)
    if item is not None and item.get("status") == "Success" and not item.get("error"):
        return replace(answer, kind=PollKind.COMPLETED, error="")
    error = str(item.get("error") or "") if item is not None else ""
    if not error or WHOLE_EXECUTION_ERROR in error or WHOLE_EXECUTION_ERROR in answer.error:
        said = f"the execution ended ({answer.server_status}) without an answer for {file_name!r}"
        return replace(answer, kind=PollKind.UNANSWERED, error=error or answer.error or said)
    return replace(answer, kind=PollKind.FAILED, error=error)


def _item_errors(message: Any) -> str:
    if not isinstance(message, list):
        return ""
    return "; ".join(
        str(item["error"]) for item in message if isinstance(item, dict) and item.get("error")
    )


def exact_file_item(body: Any, file_name: str) -> dict[str, Any] | None:
    """The per-file item of a terminal body named exactly `file_name`."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, list):
        return None
    return next((i for i in message if isinstance(i, dict) and i.get("file") == file_name), None)


def find_file_item(body: Any, file_name: str) -> dict[str, Any] | None:
    """The per-file item of a terminal body that belongs to `file_name`.

    Items are matched by name. We send one file per execution, so a lone item is ours even if
    the server changed its name on the way (some servers cut names at a backslash).
    """
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, list):
        return None
    items = [item for item in message if isinstance(item, dict)]
    for item in items:
        if item.get("file") == file_name:
            return item
    return items[0] if len(items) == 1 else None


def classify_check(status_code: int, content: bytes) -> CheckOutcome:
    """The Status API's answer for an execution that cannot exist. The server checks the
    header (403), the deployment (404 "API not found") and the key (401) before it looks for
    the execution (404 "... does not exist"), so that last answer proves URL and key."""
    body = decode_json(content)
    error = std_error_text(body)
    if status_code == 404 and "does not exist" in error:
        return CheckOutcome(CheckKind.OK, "the deployment answered and accepted the key")
    if status_code in (401, 403) or (status_code == 404 and "API not found" in error):
        return CheckOutcome(CheckKind.REFUSED, refusal(status_code, error))
    said = error or _short(content)[:80]
    found = f"HTTP {status_code}{': ' + said if said else ''}"
    if is_gateway_page(status_code, body):
        return CheckOutcome(CheckKind.UNREACHABLE, gateway_error(found))
    return CheckOutcome(
        CheckKind.UNEXPECTED, f"not an answer of an Unstract API deployment ({found})"
    )


@dataclass(frozen=True)
class UnstractResults:
    """A stored Status API answer: one item per file, and ours holds the result."""

    kind: str = field(default="unstract", init=False)

    def document(
        self, body: Any, file_name: str, execution_id: str | None, success: bool
    ) -> DocumentResult:
        item = find_file_item(body, file_name) or {}
        return DocumentResult(item.get("result"), item.get("metadata"))

    def usage(self, body: Any, file_name: str) -> Any:
        item = find_file_item(body, file_name)
        return item.get("metadata") if item else None

    def file_outcomes(
        self, answer: PollOutcome, file_names: Sequence[str], shared: bool
    ) -> tuple[PollOutcome, ...]:
        if not shared:
            return tuple(_for_file(answer, name) for name in file_names)
        return tuple(shared_file_outcome(answer, name) for name in file_names)

    def side_files(self, body: Any) -> tuple[SideFile, ...]:
        return ()

    @property
    def side_suffixes(self) -> tuple[str, ...]:
        return ()

    def export_cells(self, document: Mapping[str, Any], result_file: Path) -> dict[str, Any]:
        return result_cells(document.get("result"))


class UnstractClient:
    """The implementation of `Backend` for one API deployment (one connection pool)."""

    fetch = None  # results come in the Status API's terminal answer
    files_per_execution: int

    def __init__(
        self,
        url: str,
        api_key: SecretStr,
        *,
        tags: list[str],
        include_metadata: bool,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        files_per_execution: int = 1,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = "unstract"
        self.files_per_execution = files_per_execution
        self.results = UnstractResults()
        self._form = {"timeout": "0", "include_metadata": str(include_metadata).lower()}
        if tags:
            self._form["tags"] = ",".join(tags)
        self._include_metadata = str(include_metadata).lower()
        self._http = ApiHttp(
            url,
            {"Authorization": f"Bearer {api_key.get_secret_value()}"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connections=max_connections,
            transport=transport,
        )

    def submit(self, upload: Upload) -> SubmitOutcome:
        return self.submit_files([upload])

    def submit_files(self, uploads: Sequence[Upload]) -> SubmitOutcome:
        """One execution for all `uploads`: one multipart part named `files` each."""
        files = [("files", (u.file_name, u.content, u.content_type)) for u in uploads]
        try:
            response = self._http.post(data=self._form, files=files)
        except httpx.HTTPError as exc:
            return submit_transport_error(exc)
        return classify_submit(response.status_code, response.content)

    def poll(self, execution_id: str, file_name: str) -> PollOutcome:
        return _for_file(self.poll_execution(execution_id), file_name)

    def poll_execution(self, execution_id: str) -> PollOutcome:
        params = {"execution_id": execution_id, "include_metadata": self._include_metadata}
        try:
            response = self._http.get(params=params)
        except httpx.HTTPError as exc:
            return poll_transport_error(exc)
        return classify_execution(response.status_code, response.content)

    def check(self) -> CheckOutcome:
        try:
            response = self._http.get(params={"execution_id": NO_SUCH_EXECUTION})
        except httpx.HTTPError as exc:
            return check_transport_error(exc)
        return classify_check(response.status_code, response.content)

    def close(self) -> None:
        self._http.close()


def build(api: UnstractApiConfig) -> UnstractClient:
    """The client for one [pipelines.api] table of kind unstract."""
    return UnstractClient(
        api.url,
        api.resolve_key(),
        tags=api.tags,
        include_metadata=api.include_metadata,
        files_per_execution=api.files_per_execution,
        **http_options(api),
    )


def http_options(api: ApiBase) -> dict[str, Any]:
    """The HTTP settings every API kind takes from its config."""
    return {
        "connect_timeout": api.connect_timeout_seconds,
        "read_timeout": api.read_timeout_seconds,
        "max_connections": api.max_in_flight + 4,
    }


def submit_transport_error(exc: httpx.HTTPError) -> SubmitOutcome:
    """An upload that raised: out of reach, not sent (our pool was full), or cut off after
    sending (an execution may exist)."""
    if isinstance(exc, UNREACHABLE_ERRORS):
        return SubmitOutcome(SubmitKind.UNREACHABLE, error=transport_error(exc))
    if isinstance(exc, NOT_SENT_ERRORS):
        return SubmitOutcome(SubmitKind.RETRY, error=transport_error(exc))
    return SubmitOutcome(SubmitKind.UNKNOWN, error=transport_error(exc))


def poll_transport_error(exc: httpx.HTTPError) -> PollOutcome:
    kind = PollKind.UNREACHABLE if isinstance(exc, UNREACHABLE_ERRORS) else PollKind.RETRY
    return PollOutcome(kind, error=transport_error(exc))


def check_transport_error(exc: httpx.HTTPError) -> CheckOutcome:
    kind = CheckKind.UNREACHABLE if isinstance(exc, UNREACHABLE_ERRORS) else CheckKind.UNEXPECTED
    return CheckOutcome(kind, transport_error(exc))


def transport_error(exc: httpx.HTTPError) -> str:
    """Our words for a transport error: what happened, never a header's text."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "could not reach the API: the connection timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"could not reach the API: {_connect_failure(exc)}"
    if isinstance(exc, httpx.LocalProtocolError):
        return type(exc).__name__  # its text may quote a header, the key included
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _connect_failure(exc: httpx.ConnectError) -> str:
    """'[Errno 111] Connection refused' -> 'connection refused' (DNS and TLS errors alike)."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)).strip()
    return text[:1].lower() + text[1:] if text else "the connection failed"
