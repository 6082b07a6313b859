"""The Unstract API deployment emulator, over real HTTP on loopback.

Asserts what a client author relies on (see ../shared/api/unstract-api-behaviour.md).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from watcher.emulator import (
    DEMO_API,
    DEMO_KEY,
    DEMO_ORG,
    Deployment,
    EmulatorServer,
    UnstractEmulator,
    demo_emulator,
)
from watcher.emulator.responses import Request, json_response
from watcher.emulator.unstract import file_rounds

ORG = "org_test"
KEY = "0b0c8b3e-9f3a-4a53-8a07-3f0f6a1c2d11"
OTHER_KEY = "5d7e9a10-2b4c-4e6f-8a1b-7c9d0e1f2a3b"
GLOBAL_KEY = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
UNKNOWN_KEY = "11111111-2222-4333-8444-555555555555"
SECONDS = 0.1
FileSpec = tuple[str, tuple[str, bytes, str]]


def upload(name: str, content: bytes) -> FileSpec:
    return ("files", (name, content, "text/plain"))


@pytest.fixture
def emu() -> UnstractEmulator:
    emulator = UnstractEmulator()
    emulator.add_deployment(Deployment(ORG, "invoices", [KEY], execution_seconds=SECONDS))
    emulator.add_deployment(Deployment(ORG, "other", [OTHER_KEY], execution_seconds=SECONDS))
    emulator.add_deployment(Deployment(ORG, "inactive", [KEY], active=False))
    emulator.add_global_key(ORG, GLOBAL_KEY, apis=["invoices"])
    return emulator


@pytest.fixture
def server(emu: UnstractEmulator) -> Iterator[EmulatorServer]:
    with EmulatorServer(emu) as running:
        yield running


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
        yield http


URL = f"/deployment/api/{ORG}/invoices/"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: httpx.Client, *files: FileSpec, **data: str) -> httpx.Response:
    return client.post(URL, files=list(files or [upload("a.txt", b"one two three")]), data=data)


def execution_id(response: httpx.Response) -> str:
    value: str = response.json()["message"]["execution_id"]
    return value


def wait_terminal(emu: UnstractEmulator, exec_id: str, limit: float = 5.0) -> str:
    """Wait without the Status API's side effects."""
    deadline = time.monotonic() + limit
    while (status := emu.execution_status(exec_id)) in ("PENDING", "EXECUTING"):
        assert time.monotonic() < deadline, f"still {status}"
        time.sleep(0.01)
    assert status is not None
    return status


def poll(client: httpx.Client, exec_id: str, **params: str) -> httpx.Response:
    return client.get(URL, params={"execution_id": exec_id, **params})


def std_error(response: httpx.Response) -> tuple[str, str, str, str | None]:
    body = response.json()
    assert set(body) == {"type", "errors"} and len(body["errors"]) == 1
    error = body["errors"][0]
    return body["type"], error["code"], error["detail"], error["attr"]


# -- routing and authentication (section 1, 2) -------------------------------------------


AUTH_CASES = [
    (None, "invoices", 403, "Missing api key"),
    (f"Token {KEY}", "invoices", 403, "Missing api key"),
    (f"bearer {KEY}", "invoices", 403, "Missing api key"),
    ("Bearer", "invoices", 403, "Missing api key"),
    (f"Bearer  {KEY}", "invoices", 403, "Missing api key"),
    (f"Bearer {UNKNOWN_KEY}", "nope", 404, "API not found"),
    ("Bearer not-a-uuid", "nope", 404, "API not found"),
    (f"Bearer {KEY}", "inactive", 404, "API not found or Inactive"),
    (f"Bearer {UNKNOWN_KEY}", "invoices", 401, "Unauthorized"),
    ("Bearer not-a-uuid", "invoices", 401, "Unauthorized"),
    (f"Bearer {OTHER_KEY}", "invoices", 401, "Unauthorized"),
    (f"Bearer {GLOBAL_KEY}", "other", 401, "Unauthorized"),
]


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize(("header", "api", "status", "detail"), AUTH_CASES)
def test_auth_order(
    server: EmulatorServer, method: str, header: str | None, api: str, status: int, detail: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    url = server.deployment_url(ORG, api)
    response = httpx.request(method, url, headers=headers, files=[upload("a.txt", b"x")])
    assert response.status_code == status
    assert std_error(response) == ("client_error", "error", detail, None)
    assert "www-authenticate" not in response.headers


def test_empty_bearer_is_403(emu: UnstractEmulator) -> None:
    # httpx refuses to send a header value with trailing whitespace; ask the model directly.
    request = Request("GET", URL, headers={"authorization": "Bearer "})
    response = emu.handle(request)
    assert response.status == 403 and b"Missing api key" in response.body


def test_unknown_org_is_404(server: EmulatorServer) -> None:
    response = httpx.get(server.deployment_url("org_nope", "invoices"), headers=auth(KEY))
    assert response.status_code == 404
    assert std_error(response)[2] == "API not found"


def test_global_key_and_key_forms_accepted(server: EmulatorServer) -> None:
    url = server.deployment_url(ORG, "invoices")
    for key in (GLOBAL_KEY, KEY.upper(), KEY.replace("-", "")):
        response = httpx.post(url, headers=auth(key), files=[upload(f"{key}.txt", key.encode())])
        assert response.status_code == 200, key


def test_routing(client: httpx.Client) -> None:
    assert submit(client).status_code == 200
    no_slash = client.post(URL.rstrip("/"), files=[upload("b.txt", b"b")])
    assert no_slash.status_code == 200
    page = client.get("/api/v1/unstract/whatever/")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Not Found</h1>" in page.text
    put = client.put(URL)
    assert put.status_code == 405
    assert std_error(put) == (
        "client_error",
        "method_not_allowed",
        'Method "PUT" not allowed.',
        None,
    )


# -- POST validation (section 3) ----------------------------------------------------------

TAG_RULE = (
    "Tags must start with a letter and can only contain letters, numbers, underscores, and hyphens."
)
VALIDATION_CASES: list[tuple[dict[str, str], list[FileSpec], str, str, str]] = [
    ({}, [], "non_field_errors", "invalid", "You must provide at least one file or presigned URL."),
    (
        {},
        [upload(f"{i}.txt", b"%d" % i) for i in range(33)],
        "non_field_errors",
        "invalid",
        "You can upload a maximum of 32 files in total (uploaded or via presigned URLs).",
    ),
    ({}, [upload("empty.txt", b"")], "files.0", "empty", "The submitted file is empty."),
    ({"timeout": "soon"}, [], "timeout", "invalid", "A valid integer is required."),
    (
        {"timeout": "301"},
        [],
        "timeout",
        "max_value",
        "Ensure this value is less than or equal to 300.",
    ),
    (
        {"timeout": "-2"},
        [],
        "timeout",
        "min_value",
        "Ensure this value is greater than or equal to -1.",
    ),
    ({"include_metadata": "maybe"}, [], "include_metadata", "invalid", "Must be a valid boolean."),
    ({"tags": "a,b"}, [], "tags", "invalid", "Maximum '1' tags allowed. You provided '2' tags."),
    ({"tags": "1abc"}, [], "tags", "invalid", f"Tag '1abc' is invalid. {TAG_RULE}"),
    (
        {"tags": "a" * 51},
        [],
        "tags",
        "invalid",
        f"Tag '{'a' * 51}' exceeds the maximum length of 50.",
    ),
]


@pytest.mark.parametrize(("data", "files", "attr", "code", "detail"), VALIDATION_CASES)
def test_validation_errors(
    client: httpx.Client,
    emu: UnstractEmulator,
    data: dict[str, str],
    files: list[FileSpec],
    attr: str,
    code: str,
    detail: str,
) -> None:
    # httpx needs at least one part to send multipart; a harmless field provides it.
    response = client.post(URL, data={"unknown_field": "x", **data}, files=files or None)
    assert response.status_code == 400
    assert std_error(response) == ("validation_error", code, detail, attr)
    assert emu.stats().executions_created == 0


def test_hitl_queue_name_rejected_even_empty(client: httpx.Client) -> None:
    response = submit(client, hitl_queue_name="")
    assert response.status_code == 400
    _, _, detail, attr = std_error(response)
    assert attr == "hitl_queue_name" and "requires Unstract Enterprise" in detail


def test_singular_file_field_is_ignored(client: httpx.Client) -> None:
    response = client.post(URL, files=[("file", ("a.txt", b"x", "text/plain"))])
    assert std_error(response)[2] == "You must provide at least one file or presigned URL."


def test_a_chunked_upload_reads_as_empty_as_under_wsgi(
    client: httpx.Client, emu: UnstractEmulator
) -> None:
    """Django reads a body by its Content-Length; sent chunked, the files are not seen."""
    built = httpx.Request("POST", "http://x/", files=[upload("a.txt", b"one two")])
    headers = {"Content-Type": built.headers["Content-Type"]}
    response = client.post(URL, content=iter([built.read()]), headers=headers)
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 400
    assert std_error(response)[2] == "You must provide at least one file or presigned URL."
    assert emu.stats().executions_created == 0


def test_accepted_words_and_one_tag(client: httpx.Client) -> None:
    response = submit(client, include_metadata="yes", include_metrics="On", tags=" invoices_2 ")
    assert response.status_code == 200


# -- lifecycle (sections 4, 5, 8) ---------------------------------------------------------


def test_async_lifecycle_422_then_200_then_406(client: httpx.Client, emu: UnstractEmulator) -> None:
    response = submit(client, upload("a.txt", b"alpha beta"), tags="batch1")
    assert response.status_code == 200
    message = response.json()["message"]
    assert set(message) == {"execution_id", "execution_status", "status_api", "error", "result"}
    exec_id = message["execution_id"]
    assert message["execution_status"] == "PENDING"
    assert message["status_api"] == f"{URL}?execution_id={exec_id}"
    assert (message["error"], message["result"]) == (None, None)

    running = client.get(message["status_api"])
    assert running.status_code == 422
    assert running.json() == {"status": "PENDING", "message": None}

    wait_terminal(emu, exec_id)
    done = client.get(message["status_api"])
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "COMPLETED"
    [item] = body["message"]
    assert item["file"] == "a.txt" and item["status"] == "Success" and item["error"] is None
    digest = hashlib.sha256(b"alpha beta").hexdigest()
    assert item["result"]["output"] == {
        "document": "a.txt",
        "size_bytes": 10,
        "sha256": digest,
        "word_count": 2,
    }
    assert item["metadata"]["source_hash"] == digest
    assert item["metadata"]["execution_id"] == exec_id
    assert item["metadata"]["tags"] == ["batch1"]

    again = client.get(message["status_api"])
    assert again.status_code == 406
    assert again.json() == {"status": "COMPLETED", "message": "Result already acknowledged"}


def test_executing_after_first_quarter(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.deployment(ORG, "invoices").execution_seconds = 0.4
    exec_id = execution_id(submit(client))
    time.sleep(0.15)
    assert poll(client, exec_id).json() == {"status": "EXECUTING", "message": None}


def test_all_failed_is_error_422(client: httpx.Client, emu: UnstractEmulator) -> None:
    exec_id = execution_id(submit(client, upload("bad.txt", b"xx EMULATOR-FAIL xx")))
    wait_terminal(emu, exec_id)
    response = poll(client, exec_id)
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "ERROR"
    [item] = body["message"]
    assert item["status"] == "Failed" and item["result"] is None
    assert item["error"] == "Error processing file 'bad.txt': emulated extraction failure"
    assert poll(client, exec_id).status_code == 406


def test_mixed_batch_is_completed(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.deployment(ORG, "invoices").fail_glob = "*.bad"
    files = [
        upload("good.txt", b"fine"),
        upload("x.bad", b"by name"),
        upload("y.txt", b"EMULATOR-FAIL"),
    ]
    exec_id = execution_id(submit(client, *files))
    wait_terminal(emu, exec_id)
    response = poll(client, exec_id)
    assert response.status_code == 200
    statuses = {item["file"]: item["status"] for item in response.json()["message"]}
    assert statuses == {"good.txt": "Success", "x.bad": "Failed", "y.txt": "Failed"}


def test_duplicates_within_a_request(client: httpx.Client, emu: UnstractEmulator) -> None:
    files = [
        upload("a.txt", b"same"),
        upload("b.txt", b"same"),
        upload("c.txt", b"v1"),
        upload("c.txt", b"v2"),
    ]
    exec_id = execution_id(submit(client, *files))
    wait_terminal(emu, exec_id)
    items = {item["file"]: item for item in poll(client, exec_id).json()["message"]}
    assert set(items) == {"a.txt", "c.txt"}
    assert items["c.txt"]["result"]["output"]["sha256"] == hashlib.sha256(b"v2").hexdigest()


def test_get_include_flags_shape_the_result(client: httpx.Client, emu: UnstractEmulator) -> None:
    ids = [execution_id(submit(client, upload(f"{n}.txt", n.encode()))) for n in "abc"]
    for exec_id in ids:
        wait_terminal(emu, exec_id)
    plain, with_meta, with_metrics = (
        poll(client, ids[0]).json()["message"][0],
        poll(client, ids[1], include_metadata="true").json()["message"][0],
        poll(client, ids[2], include_metrics="1").json()["message"][0],
    )
    assert set(plain["result"]) == {"output"} and "usage" not in plain["metadata"]
    assert set(with_meta["result"]) == {"output", "metadata"}
    inner = with_meta["result"]["metadata"]
    assert inner["file_name"] == "b.txt" and inner["run_id"] == with_meta["file_execution_id"]
    assert {
        "model_name",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cost_in_dollars",
    } <= set(inner["extraction_llm"][0])
    assert isinstance(inner["extraction_llm"][0]["cost_in_dollars"], str)
    assert "extracted_text" not in inner
    usage_keys = {
        "embedding_tokens",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_in_dollars",
    }
    assert set(with_meta["metadata"]["usage"]) == usage_keys
    assert set(with_metrics["result"]) == {"output", "metrics"}
    assert set(with_metrics["metadata"]["usage"]) == usage_keys


def test_bad_flag_on_get_is_400_without_consuming(
    client: httpx.Client, emu: UnstractEmulator
) -> None:
    exec_id = execution_id(submit(client))
    wait_terminal(emu, exec_id)
    response = poll(client, exec_id, include_metadata="nope")
    assert response.status_code == 400
    assert std_error(response)[3] == "include_metadata"
    assert poll(client, exec_id).status_code == 200


def test_sync_post_consumes_results(client: httpx.Client) -> None:
    response = submit(client, upload("s.txt", b"sync me"), timeout="5", include_metadata="true")
    assert response.status_code == 200
    message = response.json()["message"]
    assert message["execution_status"] == "COMPLETED"
    [item] = message["result"]
    assert "metadata" in item["result"] and "usage" in item["metadata"]
    later = client.get(message["status_api"])
    assert later.status_code == 406


def test_sync_post_all_failed_is_422(client: httpx.Client) -> None:
    response = submit(client, upload("f.txt", b"EMULATOR-FAIL"), timeout="5")
    assert response.status_code == 422
    message = response.json()["message"]
    assert message["execution_status"] == "ERROR" and message["error"] is None
    assert message["result"][0]["status"] == "Failed"


def test_sync_post_timeout_runs_out_on_stalled(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.deployment(ORG, "invoices").stall = True
    started = time.monotonic()
    response = submit(client, timeout="1")
    assert 0.9 < time.monotonic() - started < 3
    assert response.status_code == 200
    assert response.json()["message"]["execution_status"] == "EXECUTING"
    assert poll(client, execution_id(response)).json()["status"] == "EXECUTING"


def test_expired_results_are_null_then_406(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.result_ttl_seconds = 0.05
    exec_id = execution_id(submit(client))
    wait_terminal(emu, exec_id)
    time.sleep(0.1)
    response = poll(client, exec_id)
    assert response.status_code == 200
    assert response.json() == {"status": "COMPLETED", "message": None}
    assert poll(client, exec_id).status_code == 406


def test_stopped_carries_results(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.deployment(ORG, "invoices").stall = True
    exec_id = execution_id(submit(client))
    assert emu.stop_execution(exec_id)
    response = poll(client, exec_id)
    assert response.status_code == 422
    assert response.json()["status"] == "STOPPED" and response.json()["message"]
    assert poll(client, exec_id).status_code == 406


# -- GET parameters (section 8) -----------------------------------------------------------


def test_get_execution_id_errors(client: httpx.Client) -> None:
    missing = client.get(URL)
    assert std_error(missing) == (
        "validation_error",
        "required",
        "This field is required.",
        "execution_id",
    )
    bad = client.get(URL, params={"execution_id": " nope "})
    assert bad.status_code == 400
    assert std_error(bad)[2:] == (
        "Invalid execution_id 'nope'. Must be a valid UUID.",
        "execution_id",
    )
    unknown = client.get(URL, params={"execution_id": UNKNOWN_KEY})
    assert unknown.status_code == 404
    detail = f"Execution with ID '{UNKNOWN_KEY}' does not exist."
    assert std_error(unknown) == ("client_error", "error", detail, None)


def test_get_has_no_ownership_check(server: EmulatorServer, client: httpx.Client) -> None:
    exec_id = execution_id(submit(client))
    other = httpx.get(
        server.deployment_url(ORG, "other"),
        params={"execution_id": f"  {exec_id} "},
        headers=auth(OTHER_KEY),
    )
    assert other.status_code == 422
    assert other.json()["status"] in ("PENDING", "EXECUTING")


# -- rate limiting (section 6) ------------------------------------------------------------


def test_org_limit_429_without_retry_after(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.org_limit = 2
    emu.deployment(ORG, "invoices").execution_seconds = 0.3
    first = execution_id(submit(client, upload("1.txt", b"1")))
    submit(client, upload("2.txt", b"2"))
    refused = submit(client, upload("3.txt", b"3"))
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    detail = (
        "Organization has reached the maximum concurrent API requests limit (2/2). "
        "Please try again later."
    )
    assert std_error(refused) == ("client_error", "error", detail, None)
    assert poll(client, first).status_code == 422  # GET is not rate limited
    wait_terminal(emu, first)
    time.sleep(0.02)
    # The slots free by time, without anyone reading the results.
    assert submit(client, upload("4.txt", b"4")).status_code == 200
    stats = emu.stats()
    assert stats.rate_limited == 1 and stats.max_concurrent[ORG] == 2
    assert stats.executions_created == 3 and stats.posts == 4


# -- fault injection ----------------------------------------------------------------------


def test_fault_post_error_before_create(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.faults.post_error_before_create = 1
    response = submit(client)
    assert response.status_code == 500
    assert std_error(response) == ("server_error", "error", "Server Error (500)", None)
    assert emu.stats().executions_created == 0
    assert submit(client).status_code == 200


def test_fault_post_error_after_create(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.faults.post_error_after_create = 1
    response = submit(client, upload("e.txt", b"created anyway"))
    assert response.status_code == 500 and std_error(response)[0] == "server_error"
    stats = emu.stats()
    assert stats.executions_created == 1
    assert stats.posts_by_sha256[hashlib.sha256(b"created anyway").hexdigest()] == 1
    time.sleep(SECONDS + 0.05)
    assert len(emu.stats().completed_at) == 1


def test_fault_post_drop_after_create(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.faults.post_drop_after_create = 1
    with pytest.raises(httpx.RemoteProtocolError):
        submit(client)
    assert emu.stats().executions_created == 1
    assert submit(client).status_code == 200


def test_fault_staging_error(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.set_faults(post_staging_error=1)
    response = submit(client, timeout="2")
    assert response.status_code == 422
    message = response.json()["message"]
    assert message["execution_status"] == "ERROR" and message["status_api"] is None
    assert message["error"] and message["result"] is None
    assert poll(client, message["execution_id"]).json() == {"status": "ERROR", "message": None}


def test_fault_proxy_html(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.faults.proxy_html = 2
    for response in (submit(client), poll(client, UNKNOWN_KEY)):
        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")
        assert "502 Bad Gateway" in response.text
    assert emu.stats().executions_created == 0
    assert submit(client).status_code == 200


def test_fault_get_error_has_no_side_effect(client: httpx.Client, emu: UnstractEmulator) -> None:
    exec_id = execution_id(submit(client))
    wait_terminal(emu, exec_id)
    emu.faults.get_error = 1
    failed = poll(client, exec_id)
    assert failed.status_code == 500 and std_error(failed)[2] == "Server Error (500)"
    assert poll(client, exec_id).status_code == 200


def test_fault_slow_and_unauthorized(client: httpx.Client, emu: UnstractEmulator) -> None:
    emu.faults.slow_seconds = 0.2
    started = time.monotonic()
    assert submit(client).status_code == 200
    assert time.monotonic() - started >= 0.2
    emu.set_faults(slow_seconds=0, unauthorized=True)
    for response in (submit(client), poll(client, UNKNOWN_KEY)):
        assert response.status_code == 401 and std_error(response)[2] == "Unauthorized"


def test_faults_over_http(client: httpx.Client, emu: UnstractEmulator) -> None:
    response = client.post("/_emulator/faults", json={"get_error": 2, "slow_seconds": 0.01})
    assert response.status_code == 200 and response.json()["get_error"] == 2
    assert emu.faults.get_error == 2 and emu.faults.slow_seconds == 0.01
    bad = client.post("/_emulator/faults", json={"get_eror": 1})
    assert bad.status_code == 400 and "get_eror" in std_error(bad)[2]
    assert client.post("/_emulator/faults", json={"proxy_html": -1}).status_code == 400
    assert client.get("/_emulator/faults").json()["get_error"] == 2


# -- stats ----------------------------------------------------------------------------------


def test_stats_counts(client: httpx.Client, emu: UnstractEmulator) -> None:
    first = execution_id(submit(client, upload("a.txt", b"A"), upload("b.txt", b"B")))
    second = execution_id(submit(client, upload("a2.txt", b"A")))
    for exec_id in (first, second):
        wait_terminal(emu, exec_id)
        poll(client, exec_id)
    poll(client, first)
    stats = emu.stats()
    assert (stats.posts, stats.executions_created, stats.gets) == (2, 2, 3)
    assert stats.posts_by_sha256[hashlib.sha256(b"A").hexdigest()] == 2
    assert stats.posts_by_sha256[hashlib.sha256(b"B").hexdigest()] == 1
    assert stats.gets_by_execution == {first: 2, second: 1}
    assert stats.already_acknowledged == 1
    assert set(stats.completed_at) == {first, second}
    assert all(abs(t - time.time()) < 5 for t in stats.completed_at.values())
    assert client.get("/_emulator/stats").json() == stats.as_json()
    with pytest.raises(TypeError):
        stats.gets_by_execution[first] = 0  # type: ignore[index]


# -- server wiring ------------------------------------------------------------------------


def test_demo_emulator_and_stop_is_idempotent() -> None:
    server = EmulatorServer(demo_emulator(execution_seconds=0.05)).start()
    assert server.deployment_url(DEMO_ORG, DEMO_API) == (
        f"{server.base_url}/deployment/api/org_demo/invoices/"
    )
    with httpx.Client(headers=auth(DEMO_KEY)) as http:
        response = http.post(
            server.deployment_url(DEMO_ORG, DEMO_API), files=[upload("d.txt", b"d")]
        )
        assert response.status_code == 200
        server.stop()
        server.stop()
        with pytest.raises(httpx.TransportError):
            http.post(server.deployment_url(DEMO_ORG, DEMO_API), files=[upload("e.txt", b"e")])


def test_mount_routes_another_api_by_prefix(server: EmulatorServer) -> None:
    server.mount("/api/v2/", lambda request: json_response(200, {"path": request.path}))
    assert httpx.get(f"{server.base_url}/api/v2/whisper").json() == {"path": "/api/v2/whisper"}
    assert httpx.get(f"{server.base_url}/api/v3/whisper").status_code == 404


def test_keep_alive_and_content_length(client: httpx.Client) -> None:
    responses: list[Any] = [submit(client, upload(f"{i}.txt", b"%d" % i)) for i in range(5)]
    assert all(r.http_version == "HTTP/1.1" for r in responses)
    assert all(int(r.headers["content-length"]) == len(r.content) for r in responses)


# -- files of one execution (section 12) ---------------------------------------------------


@pytest.mark.parametrize(
    ("files", "batches", "rounds"),
    [(0, 4, 1), (1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 4, 3), (32, 4, 8), (3, 1, 3)],
)
def test_an_execution_takes_a_file_time_per_round_of_batches(
    files: int, batches: int, rounds: int
) -> None:
    assert file_rounds(files, batches) == rounds


def test_five_files_in_four_batches_take_two_file_times(
    client: httpx.Client, emu: UnstractEmulator
) -> None:
    five = [upload(f"g{i}.txt", f"other {i}".encode()) for i in range(5)]
    started = time.monotonic()
    exec_id = execution_id(submit(client, *five))
    wait_terminal(emu, exec_id)
    assert time.monotonic() - started >= 2 * SECONDS  # never sooner than two rounds
    items = poll(client, exec_id).json()["message"]
    assert sorted(item["file"] for item in items) == [f"g{i}.txt" for i in range(5)]
