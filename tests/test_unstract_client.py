"""Every answer of the API tables, classified; and the bytes of the requests we send."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import streamed
from pydantic import SecretStr

from watcher.backend import CheckKind, PollKind, SubmitKind, Upload
from watcher.unstract import UnstractClient, classify_poll, classify_submit

EXEC_ID = "8c0d2f2e-4b8e-4d43-9d7c-2f1f0a9b3c11"


def std_error(detail: str, kind: str = "client_error", attr: str | None = None) -> bytes:
    return json.dumps(
        {"type": kind, "errors": [{"code": "error", "detail": detail, "attr": attr}]}
    ).encode()


def exec_message(status: str, error: str | None = None, result: Any = None) -> bytes:
    message = {
        "execution_id": EXEC_ID,
        "execution_status": status,
        "error": error,
        "status_api": f"/deployment/api/o/a/?execution_id={EXEC_ID}",
        "result": result,
    }
    return json.dumps({"message": message}).encode()


def status_body(status: str, message: Any) -> bytes:
    return json.dumps({"status": status, "message": message}).encode()


ITEM_OK = {"file": "a.pdf", "status": "Success", "result": {"output": {"total": 5}}, "error": None}
ITEM_FAILED = {"file": "a.pdf", "status": "Failed", "result": None, "error": "bad scan"}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, exec_message("PENDING"), SubmitKind.ACCEPTED),
        (200, exec_message("EXECUTING"), SubmitKind.ACCEPTED),
        (
            400,
            std_error("Tag 'x y' is invalid.", "validation_error", "tags"),
            SubmitKind.DOCUMENT_FAILED,
        ),
        (
            400,
            std_error("The submitted file is empty.", "validation_error"),
            SubmitKind.DOCUMENT_FAILED,
        ),
        (401, std_error("Unauthorized"), SubmitKind.PIPELINE_BROKEN),
        (403, std_error("Missing api key"), SubmitKind.PIPELINE_BROKEN),
        (404, std_error("API not found"), SubmitKind.PIPELINE_BROKEN),
        (404, std_error("API not found or Inactive"), SubmitKind.PIPELINE_BROKEN),
        (
            422,
            std_error("Pipeline 'x' is inactive, please activate the pipeline"),
            SubmitKind.PIPELINE_BROKEN,
        ),
        (
            429,
            std_error(
                "Organization has reached the maximum concurrent API requests limit (20/20). Please try again later."
            ),
            SubmitKind.RETRY,
        ),
        (413, b"<html>413 Request Entity Too Large</html>", SubmitKind.DOCUMENT_FAILED),
    ],
)
def test_submit_answers(status: int, body: bytes, kind: SubmitKind) -> None:
    outcome = classify_submit(status, body)
    assert outcome.kind is kind
    assert outcome.http_status == status
    if kind is SubmitKind.ACCEPTED:
        assert outcome.execution_id == EXEC_ID
    else:
        assert outcome.error  # every refusal says why


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        # the server said what it did: an ERROR execution, which gives no result
        (422, exec_message("ERROR", error="staging failed"), SubmitKind.RETRY),
        (500, exec_message("ERROR", error="TOOL_IMAGE_NOT_FOUND: tool x"), SubmitKind.RETRY),
        (200, exec_message("ERROR", error=None), SubmitKind.RETRY),  # servers before 2026-02
        # it may have created the execution before failing (sections 7 and 11)
        (500, std_error("Server Error (500)", "server_error"), SubmitKind.UNKNOWN),
        (500, std_error("A server error occurred.", "server_error"), SubmitKind.UNKNOWN),
        (500, b'{"detail": "Error processing the request."}', SubmitKind.UNKNOWN),
        (500, b"<html><title>KeyError at /deployment/api/</title></html>", SubmitKind.UNKNOWN),
        (504, b"<html>504 Gateway Time-out</html>", SubmitKind.UNKNOWN),
        (504, b"", SubmitKind.UNKNOWN),
        (507, b"", SubmitKind.UNKNOWN),
        # a gateway with no application behind it: nothing was created, the API is out of reach
        (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", SubmitKind.UNREACHABLE),
        (503, b"<html>Service Unavailable</html>", SubmitKind.UNREACHABLE),
        (503, b"", SubmitKind.UNREACHABLE),
        # the application's own 502/503 (a failed presigned-URL download): it answered
        (502, std_error("Bad Gateway", "server_error"), SubmitKind.RETRY),
        (503, std_error("Service unavailable", "server_error"), SubmitKind.RETRY),
        (408, b"<html>408 Request Timeout</html>", SubmitKind.RETRY),
    ],
)
def test_failed_uploads_by_what_the_server_could_have_done(
    status: int, body: bytes, kind: SubmitKind
) -> None:
    outcome = classify_submit(status, body)
    assert (outcome.kind, outcome.http_status, outcome.execution_id) == (kind, status, None)
    assert outcome.error


def test_429_lowers_nothing_by_itself_but_is_marked() -> None:
    assert classify_submit(429, std_error("limit")).rate_limited


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (422, status_body("PENDING", None), PollKind.RUNNING),
        (422, status_body("EXECUTING", None), PollKind.RUNNING),
        (200, status_body("EXECUTING", None), PollKind.RUNNING),  # after the announced fix
        (202, status_body("QUEUED", None), PollKind.RUNNING),  # a status we do not know yet
        (200, status_body("COMPLETED", [ITEM_OK]), PollKind.COMPLETED),
        (200, status_body("COMPLETED", None), PollKind.RESULT_GONE),  # expired
        (406, status_body("COMPLETED", "Result already acknowledged"), PollKind.RESULT_GONE),
        (406, status_body("COMPLETED", None), PollKind.RESULT_GONE),  # older servers
        (422, status_body("ERROR", [ITEM_FAILED]), PollKind.FAILED),
        (422, status_body("ERROR", None), PollKind.FAILED),
        (422, status_body("STOPPED", None), PollKind.FAILED),
        (500, status_body("ERROR", [ITEM_FAILED]), PollKind.FAILED),  # TOOL_IMAGE_NOT_FOUND
        (404, std_error(f"Execution with ID '{EXEC_ID}' does not exist."), PollKind.LOST),
        (
            400,
            std_error("Invalid execution_id 'x'. Must be a valid UUID.", "validation_error"),
            PollKind.LOST,
        ),
        (404, std_error("API not found"), PollKind.PIPELINE_BROKEN),
        (401, std_error("Unauthorized"), PollKind.PIPELINE_BROKEN),
        (403, std_error("Missing api key"), PollKind.PIPELINE_BROKEN),
        (500, std_error("Server Error (500)", "server_error"), PollKind.RETRY),
        (404, b'{"message": "no Route matched with those values"}', PollKind.RETRY),  # a gateway
        (502, b"<html>502 Bad Gateway</html>", PollKind.UNREACHABLE),
        (503, b"", PollKind.UNREACHABLE),
        (503, std_error("Service unavailable", "server_error"), PollKind.RETRY),
        (504, b"", PollKind.RETRY),
    ],
)
def test_poll_answers(status: int, body: bytes, kind: PollKind) -> None:
    assert classify_poll(status, body, "a.pdf").kind is kind


def test_failed_poll_carries_the_server_error_text() -> None:
    outcome = classify_poll(422, status_body("ERROR", [ITEM_FAILED]), "a.pdf")
    assert outcome.error == "bad scan"
    assert outcome.body["message"][0]["file"] == "a.pdf"


@pytest.mark.parametrize(
    ("items", "kind", "error_part"),
    [
        ([ITEM_OK], PollKind.COMPLETED, ""),
        ([{**ITEM_FAILED}], PollKind.FAILED, "bad scan"),  # COMPLETED, but our file failed
        (
            [{**ITEM_OK, "file": "b.pdf"}, {**ITEM_OK, "file": "c.pdf"}],
            PollKind.FAILED,
            "without a result",
        ),
        ([{**ITEM_OK, "file": "renamed.pdf"}], PollKind.COMPLETED, ""),  # a lone item is ours
        ([{**ITEM_OK, "file": "b.pdf"}, ITEM_OK], PollKind.COMPLETED, ""),  # matched by name
    ],
)
def test_our_file_is_picked_out_of_a_completed_execution(
    items: list[dict[str, Any]], kind: PollKind, error_part: str
) -> None:
    outcome = classify_poll(200, status_body("COMPLETED", items), "a.pdf")
    assert outcome.kind is kind
    assert error_part in outcome.error
    assert outcome.body == {"status": "COMPLETED", "message": items}  # stored as it came


def _client(handler: Any, **kwargs: Any) -> UnstractClient:
    options: dict[str, Any] = dict(
        tags=["invoices"],
        include_metadata=True,
        connect_timeout=1,
        read_timeout=1,
        max_connections=2,
    )
    options.update(kwargs)
    return UnstractClient(
        "https://unstract.example/deployment/api/org_1/invoices/",
        SecretStr("6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13"),
        transport=httpx.MockTransport(handler),
        **options,
    )


def test_submit_sends_one_multipart_file_async_with_tags_and_bearer_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=exec_message("PENDING"))

    outcome = _client(handler).submit(Upload("scan 1.pdf", b"%PDF-1.4 data", "application/pdf"))
    assert outcome.kind is SubmitKind.ACCEPTED
    request = seen[0]
    body = request.read()
    assert request.method == "POST"
    assert request.headers["Authorization"] == "Bearer 6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13"
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="files"; filename="scan 1.pdf"' in body
    assert b"Content-Type: application/pdf" in body
    assert b"%PDF-1.4 data" in body
    assert b'name="timeout"\r\n\r\n0\r\n' in body
    assert b'name="tags"\r\n\r\ninvoices\r\n' in body
    assert b'name="include_metadata"\r\n\r\ntrue\r\n' in body


def test_submit_files_sends_one_part_per_document_in_one_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=exec_message("PENDING"))

    uploads = [Upload(f"p{i}.pdf", f"%PDF-1.4 {i}".encode(), "application/pdf") for i in range(3)]
    outcome = _client(handler, files_per_execution=4).submit_files(uploads)
    assert outcome.kind is SubmitKind.ACCEPTED and len(seen) == 1
    body = seen[0].read()
    assert body.count(b'name="files"; filename=') == 3
    for index in range(3):
        assert f'name="files"; filename="p{index}.pdf"'.encode() in body
        assert f"%PDF-1.4 {index}".encode() in body
    assert body.count(b'name="timeout"') == 1


def test_streamed_documents_reach_the_transport_as_the_bytes_httpx_would_send(
    tmp_path: Path,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=exec_message("PENDING"))

    contents = [os.urandom(600_000), b"%PDF-1.4 small"]
    for index, content in enumerate(contents):
        (tmp_path / f"p{index}.pdf").write_bytes(content)
    with streamed(tmp_path / "p0.pdf") as big, streamed(tmp_path / "p1.pdf") as small:
        uploads = [Upload(f"p{i}.pdf", d, "application/pdf") for i, d in enumerate([big, small])]
        _client(handler, files_per_execution=4).submit_files(uploads)
    request = seen[0]
    files = [("files", (f"p{i}.pdf", c, "application/pdf")) for i, c in enumerate(contents)]
    form = {"timeout": "0", "include_metadata": "true", "tags": "invoices"}
    content_type = {"Content-Type": request.headers["Content-Type"]}
    expected = httpx.Request("POST", request.url, data=form, files=files, headers=content_type)
    assert request.read() == expected.read()
    assert request.headers["Content-Length"] == str(len(expected.read()))
    assert "Transfer-Encoding" not in request.headers


def test_poll_execution_answers_for_the_execution_and_each_file_by_name() -> None:
    items = [
        {"file": "a.pdf", "status": "Success", "error": None, "result": {"output": {}}},
        {"file": "b.pdf", "status": "Failed", "error": "bad scan", "result": None},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=status_body("COMPLETED", items))

    client = _client(handler, files_per_execution=4)
    answer = client.poll_execution(EXEC_ID)
    assert answer.kind is PollKind.COMPLETED
    kinds = [o.kind for o in client.results.file_outcomes(answer, ["b.pdf", "a.pdf"], True)]
    assert kinds == [PollKind.FAILED, PollKind.COMPLETED]


def test_poll_asks_by_execution_id_and_include_flags() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(422, content=status_body("EXECUTING", None))

    assert _client(handler).poll(EXEC_ID, "a.pdf").kind is PollKind.RUNNING
    assert seen[0].method == "GET"
    assert seen[0].url.params["execution_id"] == EXEC_ID
    assert seen[0].url.params["include_metadata"] == "true"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError("refused"), SubmitKind.UNREACHABLE),  # nothing left our side
        (httpx.ConnectTimeout("slow"), SubmitKind.UNREACHABLE),
        (httpx.PoolTimeout("busy"), SubmitKind.RETRY),  # our own pool: the API may be fine
        (httpx.ReadTimeout("no answer"), SubmitKind.UNKNOWN),  # the server may have acted
        (httpx.RemoteProtocolError("closed"), SubmitKind.UNKNOWN),
    ],
)
def test_transport_errors_on_submit(error: Exception, kind: SubmitKind) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    outcome = _client(handler).submit(Upload("a.pdf", b"x", "application/pdf"))
    assert outcome.kind is kind
    assert "6f1c2a8e" not in outcome.error


def test_transport_errors_on_poll_are_retried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer")

    assert _client(handler).poll(EXEC_ID, "a.pdf").kind is PollKind.RETRY


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), PollKind.UNREACHABLE),
        (httpx.ConnectTimeout("slow"), PollKind.UNREACHABLE),
        (httpx.RemoteProtocolError("closed"), PollKind.RETRY),
    ],
)
def test_a_poll_that_never_reached_the_api_is_an_outage(error: Exception, kind: PollKind) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    assert _client(handler).poll(EXEC_ID, "a.pdf").kind is kind


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (
            httpx.Response(
                404, content=std_error(f"Execution with ID '{EXEC_ID}' does not exist.")
            ),
            CheckKind.OK,
        ),
        (httpx.Response(401, content=std_error("Unauthorized")), CheckKind.REFUSED),
        (httpx.Response(404, content=std_error("API not found")), CheckKind.REFUSED),
        (httpx.Response(502, content=b"<html>502 Bad Gateway</html>"), CheckKind.UNREACHABLE),
        (httpx.Response(503, content=b""), CheckKind.UNREACHABLE),
        (httpx.ConnectError("[Errno -2] Name or service not known"), CheckKind.UNREACHABLE),
        (httpx.Response(200, content=b"<html>a web shop</html>"), CheckKind.UNEXPECTED),
    ],
)
def test_the_harmless_check_tells_refused_from_out_of_reach(
    answer: httpx.Response | Exception, kind: CheckKind
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert _client(handler).check().kind is kind
