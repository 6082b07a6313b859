"""LLMWhisperer v2: every documented answer classified, and the bytes of our requests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import streamed
from pydantic import SecretStr

from watcher.backend import PollKind, SubmitKind, Upload
from watcher.config import ApiBase, LLMWhispererApiConfig
from watcher.llmwhisperer import (
    ALWAYS_SENT,
    OPTIONS,
    LLMWhispererClient,
    classify_retrieve,
    classify_status,
    classify_submit,
    wire_options,
)

HASH = "1a2b3c4d|0123456789abcdef0123456789abcdef"


def js(body: Any) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            202,
            js({"message": "Whisper Job Accepted", "status": "processing", "whisper_hash": HASH}),
            SubmitKind.ACCEPTED,
        ),
        (200, js({"status": "processing", "whisper_hash": HASH}), SubmitKind.ACCEPTED),
        (400, js({"message": "Invalid line_splitter_strategy"}), SubmitKind.DOCUMENT_FAILED),
        (401, js({"message": "API key missing or not valid"}), SubmitKind.PIPELINE_BROKEN),
        (403, js({"message": "not entitled"}), SubmitKind.PIPELINE_BROKEN),
        (402, js({"message": "quota exceeded"}), SubmitKind.PIPELINE_BROKEN),
        (429, js({"message": "slow down"}), SubmitKind.RETRY),
        # a 500 may follow the whisper's creation, and a 504 gateway gave up meanwhile
        (500, js({"message": "Internal Server Error"}), SubmitKind.UNKNOWN),
        (500, b"Internal Server Error", SubmitKind.UNKNOWN),
        (504, b"<html>504 Gateway Time-out</html>", SubmitKind.UNKNOWN),
        # a gateway with no service behind it: nothing was created, the API is out of reach
        (502, b"<html>502 Bad Gateway</html>", SubmitKind.UNREACHABLE),
        (503, b"<html>503 Service Temporarily Unavailable</html>", SubmitKind.UNREACHABLE),
        (503, js({"message": "maintenance"}), SubmitKind.RETRY),  # the service's own answer
        (413, b"<html>413</html>", SubmitKind.DOCUMENT_FAILED),
    ],
)
def test_submit_answers(status: int, body: bytes, kind: SubmitKind) -> None:
    outcome = classify_submit(status, body, httpx.Headers({"Retry-After": "7"}))
    assert outcome.kind is kind
    if kind is SubmitKind.ACCEPTED:
        assert outcome.execution_id == HASH
    if status == 429:
        assert outcome.rate_limited and outcome.retry_after_seconds == 7.0


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        # both documented generations of the status endpoint (llmwhisperer-v2.md 2.2)
        (200, js({"status": "accepted"}), PollKind.RUNNING),
        (200, js({"status": "processing", "message": "", "detail": []}), PollKind.RUNNING),
        (200, js({"status": "stage_extraction"}), PollKind.RUNNING),
        (200, js({"status": "something_new"}), PollKind.RUNNING),
        (200, js({"status": "processed"}), PollKind.READY),
        (200, js({"status": "webhook_retries_exceeded"}), PollKind.READY),
        (200, js({"status": "error", "message": "error reading file"}), PollKind.FAILED),
        (200, js({"status": "failed", "message": "bad pdf"}), PollKind.FAILED),
        (400, js({"status": "error_pdf_corrupt", "message": "corrupt"}), PollKind.FAILED),
        (200, js({"status": "retrieved"}), PollKind.RESULT_GONE),
        (200, js({"status": "delivered"}), PollKind.RESULT_GONE),
        (
            400,
            js({"status": "retrieved", "message": "deleted once retrieved"}),
            PollKind.RESULT_GONE,
        ),
        (200, js({"status": "unknown"}), PollKind.LOST),
        (
            400,
            js({"message": "Whisper job not found for the provided whisper hash"}),
            PollKind.LOST,
        ),
        (401, js({"message": "bad key"}), PollKind.PIPELINE_BROKEN),
        (500, b"oops", PollKind.RETRY),
        # any JSON 404 of the status endpoint: the hash is unknown or expired (section 2.2)
        (404, js({"message": "Whisper job unknown"}), PollKind.LOST),
        (404, js({"message": "Record expired"}), PollKind.LOST),
        (404, js({"detail": "Not Found"}), PollKind.LOST),
        (404, b"<html>404 Not Found</html>", PollKind.RETRY),  # a proxy's page
        (404, b"", PollKind.RETRY),
        (429, js({"message": "slow down"}), PollKind.RETRY),
    ],
)
def test_status_answers(status: int, body: bytes, kind: PollKind) -> None:
    assert classify_status(status, body).kind is kind


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, js({"status": "error", "message": "bad scan"}), "bad scan"),
        (400, js({"status": "error_ocr"}), "error_ocr"),  # no message: the status says it
        (200, js({"status": "failed", "message": ""}), "failed"),
        (200, js({"status": "unknown"}), "whisper hash unknown"),
        (500, b"Internal Server Error", "Internal Server Error"),  # no JSON: an excerpt
        (500, b"x" * 500, "x" * 200),
    ],
)
def test_a_status_answer_says_why_in_words_not_json(status: int, body: bytes, error: str) -> None:
    assert classify_status(status, body).error == error


RETRIEVED = {
    "result_text": "Hello <<<",
    "confidence_metadata": [],
    "line_metadata": [],
    "metadata": {},
    "webhook_metadata": "",
}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, js(RETRIEVED), PollKind.COMPLETED),
        (400, js({"message": "Whisper not ready : processing"}), PollKind.RETRY),
        (400, js({"message": "Whisper already delivered"}), PollKind.RESULT_GONE),
        (404, js({"message": "Whisper job unknown"}), PollKind.LOST),
        (400, js({"message": "Whisper not found"}), PollKind.LOST),
        (500, b"oops", PollKind.RETRY),  # maybe deleted, maybe not: ask the status first
        (404, b"<html>404 Not Found</html>", PollKind.RETRY),  # a proxy page: ask the status
        (401, js({"message": "bad key"}), PollKind.PIPELINE_BROKEN),
    ],
)
def test_retrieve_answers(status: int, body: bytes, kind: PollKind) -> None:
    outcome = classify_retrieve(status, body)
    assert outcome.kind is kind
    if kind is PollKind.COMPLETED:
        assert outcome.body == RETRIEVED


def client(handler: Any, **options: Any) -> LLMWhispererClient:
    api = LLMWhispererApiConfig(kind="llmwhisperer", api_key_env="X", **options)
    return LLMWhispererClient(
        "https://llmw.example/api/v2",
        SecretStr("k-123"),
        options=wire_options(api),
        connect_timeout=1,
        read_timeout=1,
        max_connections=2,
        transport=httpx.MockTransport(handler),
    )


def test_a_streamed_document_goes_as_its_bytes_with_a_content_length(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"whisper_hash": HASH, "status": "processing"})

    content = os.urandom(600_000)
    (tmp_path / "scan.pdf").write_bytes(content)
    with streamed(tmp_path / "scan.pdf") as document:
        client(handler).submit(Upload("scan.pdf", document, "application/pdf"))
    assert seen[0].read() == content
    assert seen[0].headers["Content-Length"] == str(len(content))
    assert "Transfer-Encoding" not in seen[0].headers


def test_submit_sends_raw_bytes_with_the_key_header_and_changed_options_only() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"whisper_hash": HASH, "status": "processing"})

    backend = client(handler, mode="high_quality", page_separator="--page--", tag="scans")
    outcome = backend.submit(Upload("scan 1.pdf", b"%PDF-1.7 bytes", "application/pdf"))
    assert outcome.kind is SubmitKind.ACCEPTED
    request = seen[0]
    assert request.url.path == "/api/v2/whisper"
    assert request.headers["unstract-key"] == "k-123"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.read() == b"%PDF-1.7 bytes"
    params = dict(request.url.params)
    assert params == {
        "mode": "high_quality",
        "output_mode": "layout_preserving",
        "tag": "scans",
        "page_separator": "--page--",
        "page_seperator": "--page--",
        "file_name": "scan 1.pdf",
    }


def test_every_extraction_option_of_the_config_is_sent_when_changed() -> None:
    """The wire options are listed by name: a config field added later must be listed too."""
    not_options = {"kind", "url", "write_text_file", *ApiBase.model_fields}
    options = set(LLMWhispererApiConfig.model_fields) - not_options
    assert options == {*ALWAYS_SENT, *OPTIONS}
    api = LLMWhispererApiConfig(kind="llmwhisperer", api_key_env="X", add_line_nos=True, lang="deu")
    assert wire_options(api) == {
        "mode": "form",
        "output_mode": "layout_preserving",
        "tag": "default",
        "lang": "deu",
        "add_line_nos": "true",
    }


def test_status_and_retrieve_urls_carry_the_hash() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("whisper-status"):
            return httpx.Response(200, json={"status": "processed"})
        return httpx.Response(200, json=RETRIEVED)

    backend = client(handler)
    assert backend.poll(HASH, "a.pdf").kind is PollKind.READY
    assert backend.fetch(HASH, "a.pdf").kind is PollKind.COMPLETED
    assert [r.url.path for r in seen] == ["/api/v2/whisper-status", "/api/v2/whisper-retrieve"]
    assert all(r.url.params["whisper_hash"] == HASH for r in seen)
    assert "%7C" in str(seen[0].url)  # the | of the hash is URL-encoded


def test_a_retrieve_cut_off_is_never_called_complete() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("cut off")

    assert client(handler).fetch(HASH, "a.pdf").kind is PollKind.RETRY
