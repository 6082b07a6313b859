"""LLMWhisperer v2: submit (POST /whisper), status (GET /whisper-status), retrieve (read once).

The service answers in two generations of statuses (llmwhisperer-v2.md section 2.2); the
client accepts the union. Retrieve deletes the text on the server, so it is never repeated
blindly: after any doubt the status is asked first (`retrieved` means the text is gone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from watcher.api_config import LLMWhispererApiConfig
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
from watcher.filters import as_text
from watcher.flatten import result_cells
from watcher.http import ApiHttp
from watcher.output import side_path
from watcher.unstract import (
    check_transport_error,
    decode_json,
    gateway_error,
    http_options,
    is_gateway_page,
    poll_transport_error,
    submit_transport_error,
)

RUNNING_STATUSES = {"accepted", "processing"}
READY_STATUSES = {"processed", "webhook_retries_exceeded"}
GONE_STATUSES = {"retrieved", "delivered"}
BROKEN_CODES = {401, 402, 403, 404}
# A 502/503: a gateway found no service to hand the request to, so nothing was created.
NOT_ACTED_ON_CODES = {502, 503}
# The options of POST /whisper, by their config names and in the order they are sent:
# ALWAYS_SENT always, the others when the config differs from the service's default.
ALWAYS_SENT = ("mode", "output_mode", "tag")
OPTIONS = (
    "page_separator",
    "pages_to_extract",
    "lang",
    "median_filter_size",
    "gaussian_blur_radius",
    "line_splitter_tolerance",
    "line_splitter_strategy",
    "horizontal_stretch_factor",
    "mark_vertical_lines",
    "mark_horizontal_lines",
    "add_line_nos",
)
TEXT_SUFFIX = ".txt"  # the extracted text beside the result file: <name>.txt
# The per-line arrays and the text itself: the text file holds the text, and the
# confidence figures sum the rest up.
BULK_FIELDS = frozenset({"result_text", "line_metadata", "confidence_metadata"})


def _service_message(body: Any) -> str:
    return str(body["message"]) if isinstance(body, dict) and body.get("message") else ""


def _message(body: Any, content: bytes) -> str:
    return _service_message(body) or content[:200].decode("utf-8", errors="replace").strip()


def _retry_after(headers: httpx.Headers | None) -> float | None:
    try:
        return float(headers["Retry-After"]) if headers and "Retry-After" in headers else None
    except ValueError:
        return None


def _says_unknown(message: str) -> bool:
    """The service's own words for a hash it does not know (not a proxy's 404 page)."""
    lowered = message.lower()
    return "whisper" in lowered and ("not found" in lowered or "unknown" in lowered)


def classify_submit(
    status_code: int, content: bytes, headers: httpx.Headers | None = None
) -> SubmitOutcome:
    """What an answer to POST /whisper means for the document sent."""
    body = decode_json(content)
    error = _message(body, content) or f"HTTP {status_code}"
    if status_code in (200, 202) and isinstance(body, dict) and body.get("whisper_hash"):
        return SubmitOutcome(SubmitKind.ACCEPTED, str(body["whisper_hash"]), status_code)
    if status_code == 429:
        wait = _retry_after(headers)
        return SubmitOutcome(
            SubmitKind.RETRY, None, status_code, error, rate_limited=True, retry_after_seconds=wait
        )
    if status_code in BROKEN_CODES:
        return SubmitOutcome(
            SubmitKind.PIPELINE_BROKEN, None, status_code, refusal(status_code, error)
        )
    if status_code in (400, 413, 415):
        return SubmitOutcome(SubmitKind.DOCUMENT_FAILED, None, status_code, error)
    if status_code >= 500 and status_code not in NOT_ACTED_ON_CODES:
        # 5xx are undocumented (section 1.4): a 500 may come after the whisper was created,
        # and a gateway's 504 gave up while the service went on. It may exist.
        return SubmitOutcome(SubmitKind.UNKNOWN, None, status_code, error)
    if is_gateway_page(status_code, body):
        return SubmitOutcome(SubmitKind.UNREACHABLE, None, status_code, gateway_error(error))
    return SubmitOutcome(SubmitKind.RETRY, None, status_code, error)


def classify_status(status_code: int, content: bytes) -> PollOutcome:
    """What an answer to GET /whisper-status says about a whisper."""
    body = decode_json(content)
    status = body.get("status") if isinstance(body, dict) else None
    message = _message(body, content)
    if status_code in (401, 403):
        return PollOutcome(
            PollKind.PIPELINE_BROKEN, None, status_code, refusal(status_code, message)
        )
    if isinstance(status, str) and status_code in (200, 400):
        return _classify_status_value(status, status_code, _service_message(body))
    if status_code == 404 and body is not None:
        # The service's own 404 (JSON): the hash is unknown or expired (section 2.2). A
        # non-JSON 404 is a proxy's page and proves nothing about the whisper.
        return PollOutcome(PollKind.LOST, None, status_code, message)
    if status_code == 400 and _says_unknown(message):
        return PollOutcome(PollKind.LOST, None, status_code, message)
    return _poll_retry(status_code, body, message)


def _poll_retry(status_code: int, body: Any, message: str) -> PollOutcome:
    """An answer that says nothing about the whisper: a gateway's page, or a passing error."""
    said = message or f"HTTP {status_code}"
    if is_gateway_page(status_code, body):
        return PollOutcome(PollKind.UNREACHABLE, None, status_code, gateway_error(said))
    return PollOutcome(PollKind.RETRY, None, status_code, said)


def _classify_status_value(status: str, status_code: int, message: str) -> PollOutcome:
    if status in READY_STATUSES:
        return PollOutcome(PollKind.READY, status, status_code)
    if status in GONE_STATUSES:
        return PollOutcome(PollKind.RESULT_GONE, status, status_code, "text already retrieved")
    if status == "unknown":
        return PollOutcome(PollKind.LOST, status, status_code, message or "whisper hash unknown")
    if status in ("failed", "error") or "error" in status:
        return PollOutcome(PollKind.FAILED, status, status_code, message or status)
    # accepted, processing, stage_*, or a status this client does not know yet: still running.
    return PollOutcome(PollKind.RUNNING, status, status_code)


def classify_retrieve(status_code: int, content: bytes) -> PollOutcome:
    """What an answer to GET /whisper-retrieve means. Anything unclear sends us back to the
    status endpoint, which knows whether the text is still there."""
    body = decode_json(content)
    message = _message(body, content)
    if status_code == 200 and isinstance(body, dict) and "result_text" in body:
        return PollOutcome(PollKind.COMPLETED, "processed", status_code, body=body)
    if status_code in (401, 403):
        return PollOutcome(
            PollKind.PIPELINE_BROKEN, None, status_code, refusal(status_code, message)
        )
    if status_code == 400 and "already delivered" in message:
        return PollOutcome(PollKind.RESULT_GONE, "retrieved", status_code, message)
    if status_code in (400, 404) and _says_unknown(message):
        return PollOutcome(PollKind.LOST, None, status_code, message)
    return _poll_retry(status_code, body, message)


def classify_check(status_code: int, content: bytes) -> CheckOutcome:
    """The answer to GET /get-usage-info (section 4.3), which costs nothing."""
    body = decode_json(content)
    if status_code == 200 and isinstance(body, dict) and "subscription_plan" in body:
        return CheckOutcome(CheckKind.OK, f"the service accepted the key ({_usage(body)})")
    message = _message(body, content)
    if status_code in BROKEN_CODES:
        return CheckOutcome(CheckKind.REFUSED, refusal(status_code, message))
    said = message[:80]
    found = f"HTTP {status_code}{': ' + said if said else ''}"
    if is_gateway_page(status_code, body):
        return CheckOutcome(CheckKind.UNREACHABLE, gateway_error(found))
    return CheckOutcome(CheckKind.UNEXPECTED, f"not an answer of LLMWhisperer v2 ({found})")


def _usage(body: dict[str, Any]) -> str:
    """'plan X, 12 pages today, 340 of 10000 this month' (-1 means no such quota)."""

    def count(used: str, quota: str) -> str:
        limit = body.get(quota)
        return f"{body.get(used)}" + (f" of {limit}" if limit not in (None, -1) else "")

    today = count("today_page_count", "daily_quota")
    month = count("current_page_count", "monthly_quota")
    return f"plan {body['subscription_plan']}, {today} pages today, {month} this month"


class LLMWhispererClient:
    """The implementation of `Backend` for LLMWhisperer v2 (one connection pool)."""

    def __init__(
        self,
        url: str,
        api_key: SecretStr,
        *,
        options: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        transport: httpx.BaseTransport | None = None,
        results: LLMWhispererResults | None = None,
    ) -> None:
        self.name = "llmwhisperer"
        self.files_per_execution = 1
        self.results = results or LLMWhispererResults()
        self._options = options
        self._http = ApiHttp(
            url.rstrip("/") + "/",
            {"unstract-key": api_key.get_secret_value()},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connections=max_connections,
            transport=transport,
        )

    def submit(self, upload: Upload) -> SubmitOutcome:
        params = {**self._options, "file_name": upload.file_name}
        headers = {"Content-Type": "application/octet-stream"}
        try:
            response = self._http.post(
                "whisper", params=params, content=upload.content, headers=headers
            )
        except httpx.HTTPError as exc:
            return submit_transport_error(exc)
        return classify_submit(response.status_code, response.content, response.headers)

    def submit_files(self, uploads: Sequence[Upload]) -> SubmitOutcome:
        # One document per request: files_per_execution is 1, so a claim never packs more.
        (upload,) = uploads
        return self.submit(upload)

    def poll(self, execution_id: str, file_name: str) -> PollOutcome:
        return self._get("whisper-status", execution_id, classify_status)

    def poll_execution(self, execution_id: str) -> PollOutcome:
        return self.poll(execution_id, "")

    def fetch(self, execution_id: str, file_name: str) -> PollOutcome:
        return self._get("whisper-retrieve", execution_id, classify_retrieve)

    def check(self) -> CheckOutcome:
        try:
            response = self._http.get("get-usage-info")
        except httpx.HTTPError as exc:
            return check_transport_error(exc)
        return classify_check(response.status_code, response.content)

    def _get(self, path: str, whisper_hash: str, classify: Any) -> PollOutcome:
        try:
            response = self._http.get(path, params={"whisper_hash": whisper_hash})
        except httpx.HTTPError as exc:
            return poll_transport_error(exc)
        outcome: PollOutcome = classify(response.status_code, response.content)
        return outcome

    def close(self) -> None:
        self._http.close()


def result_text(body: Any) -> str | None:
    """The extracted text of a stored retrieve answer."""
    text = body.get("result_text") if isinstance(body, dict) else None
    return text if isinstance(text, str) else None


@dataclass(frozen=True)
class LLMWhispererResults:
    """A stored retrieve answer: the whole answer is the document's result."""

    write_text_file: bool = False  # also <name>.txt with the extracted text
    kind: str = field(default="llmwhisperer", init=False)

    def document(
        self, body: Any, file_name: str, execution_id: str | None, success: bool
    ) -> DocumentResult:
        result = body if success else None
        metadata = result.get("metadata") if isinstance(result, dict) else None
        return DocumentResult(result, metadata, {"whisper_hash": execution_id})

    def usage(self, body: Any, file_name: str) -> Any:
        return None  # no LLM is paid per document: pages are counted by the service

    def file_outcomes(
        self, answer: PollOutcome, file_names: Sequence[str], shared: bool
    ) -> tuple[PollOutcome, ...]:
        return tuple(answer for _ in file_names)  # one document per whisper

    def side_files(self, body: Any) -> tuple[SideFile, ...]:
        text = result_text(body) if self.write_text_file else None
        return () if text is None else (SideFile(TEXT_SUFFIX, text.encode("utf-8")),)

    @property
    def side_suffixes(self) -> tuple[str, ...]:
        return (TEXT_SUFFIX,) if self.write_text_file else ()

    def export_cells(self, document: Mapping[str, Any], result_file: Path) -> dict[str, Any]:
        result = document.get("result")
        if not isinstance(result, dict):
            return result_cells(result)
        text = side_path(result_file, TEXT_SUFFIX)
        return {
            "text_file": as_text(str(text)) if text.is_file() else None,
            **confidence_figures(result.get("confidence_metadata")),
            **result_cells(result, skip=BULK_FIELDS),
        }


def confidence_figures(confidence_metadata: Any) -> dict[str, Any]:
    """Per line, the words read with low confidence: how many there are, and the lowest
    confidence given."""
    if not isinstance(confidence_metadata, list):
        return {}
    words = [w for line in confidence_metadata if isinstance(line, list) for w in line]
    scores = [w["confidence"] for w in words if _is_number(_get(w, "confidence"))]
    return {"low_confidence_words": len(words), "min_confidence": min(scores, default=None)}


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def wire_options(api: LLMWhispererApiConfig) -> dict[str, str]:
    """The query options to send: mode, output_mode and tag, then those that differ from
    the service's defaults."""
    defaults = type(api).model_fields
    sent = {name: _wire(getattr(api, name)) for name in ALWAYS_SENT}
    for name in OPTIONS:
        value = getattr(api, name)
        if value != defaults[name].default:
            sent[name] = _wire(value)
    if "page_separator" in sent:
        sent["page_seperator"] = sent["page_separator"]  # older services read only this
    return sent


def _wire(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def build(api: LLMWhispererApiConfig) -> LLMWhispererClient:
    """The client for one [pipelines.api] table of kind llmwhisperer."""
    return LLMWhispererClient(
        api.url,
        api.resolve_key(),
        options=wire_options(api),
        results=LLMWhispererResults(api.write_text_file),
        **http_options(api),
    )
