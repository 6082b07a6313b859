"""The LLMWhisperer v2 emulator, over real HTTP on loopback.

Asserts what a client author relies on (see ../shared/api/llmwhisperer-v2.md). Most tests
drive the emulator's clock by hand, so status progressions are exact and need no sleeping.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from watcher.emulator import (
    DEMO_API,
    DEMO_KEY,
    DEMO_ORG,
    LLMW_DEMO_KEY,
    EmulatorServer,
    LLMWhispererEmulator,
    StatusGeneration,
    UnstractEmulator,
    demo_emulator,
    llmwhisperer_demo_emulator,
    llmwhisperer_url,
    mount_llmwhisperer,
)
from watcher.emulator.llmwhisperer import CONTROL_PREFIX, PATH_PREFIX
from watcher.emulator.responses import Request, Response

KEY = "3f9a0c1e5b7d4f2a8c6e0b1d3f5a7c9e"
UNENTITLED = "unentitled-key"
HASH_FORMAT = re.compile(r"^[0-9a-f]{8}\|[0-9a-f]{32}$")
DOC = b"first page\n\fsecond page\n"
NOT_FOUND = "Whisper job not found for the provided whisper hash"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Attach = Callable[[LLMWhispererEmulator], httpx.Client]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_emulator(
    clock: FakeClock, generation: str = "current", **kwargs: Any
) -> LLMWhispererEmulator:
    return LLMWhispererEmulator(
        keys=[KEY],
        processing_seconds=1.0,
        status_generation=generation,
        unentitled_keys=[UNENTITLED],
        clock=clock,
        **kwargs,
    )


class Switch:
    """Routes the module's one server to the current test's emulator (a server per test
    would cost its shutdown poll each time)."""

    def __init__(self) -> None:
        self.emu = LLMWhispererEmulator()

    def handle(self, request: Request) -> Response:
        return self.emu.handle(request)

    def control(self, request: Request) -> Response:
        return self.emu.control(request)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[EmulatorServer, Switch]]:
    switch = Switch()
    with EmulatorServer(UnstractEmulator()) as server:
        server.mount(PATH_PREFIX, switch.handle)
        server.mount(CONTROL_PREFIX, switch.control)
        yield server, switch


@pytest.fixture
def attach(
    shared: tuple[EmulatorServer, Switch],
) -> Iterator[Attach]:
    """Serve an emulator on the shared server; returns a client with the test key."""
    server, switch = shared
    clients: list[httpx.Client] = []

    def attach_to(emu: LLMWhispererEmulator) -> httpx.Client:
        switch.emu = emu
        clients.append(
            httpx.Client(
                base_url=llmwhisperer_url(server), headers={"unstract-key": KEY}, timeout=10
            )
        )
        return clients[-1]

    yield attach_to
    for http in clients:
        http.close()


@pytest.fixture
def emu(clock: FakeClock) -> LLMWhispererEmulator:
    return make_emulator(clock)


@pytest.fixture
def client(attach: Attach, emu: LLMWhispererEmulator) -> httpx.Client:
    return attach(emu)


def submit(http: httpx.Client, body: bytes = DOC, /, **params: str) -> httpx.Response:
    return http.post("/whisper", content=body, params=params)


def whisper_hash(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    value: str = response.json()["whisper_hash"]
    return value


def status(http: httpx.Client, hash_: str) -> httpx.Response:
    return http.get("/whisper-status", params={"whisper_hash": hash_})


def retrieve(http: httpx.Client, hash_: str, **params: str) -> httpx.Response:
    return http.get("/whisper-retrieve", params={"whisper_hash": hash_, **params})


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()


# -- auth, routing, submit ----------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/whisper"),
    ("GET", "/whisper-status"),
    ("GET", "/whisper-retrieve"),
    ("GET", "/whisper-detail"),
    ("GET", "/get-usage-info"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    ("key", "code"), [(None, 401), ("", 401), ("wrong", 401), (KEY.upper(), 401), (UNENTITLED, 403)]
)
def test_auth(
    client: httpx.Client,
    emu: LLMWhispererEmulator,
    method: str,
    path: str,
    key: str | None,
    code: int,
) -> None:
    headers = {} if key is None else {"unstract-key": key}
    with httpx.Client(base_url=client.base_url, headers=headers) as http:
        response = http.request(method, path, content=DOC, params={"whisper_hash": "x"})
    assert response.status_code == code
    assert set(response.json()) == {"message"}
    assert emu.stats().whispers_created == 0


def test_routing(client: httpx.Client) -> None:
    assert answer(client.get("/whisper")) == (405, {"message": "Method Not Allowed"})
    assert client.post("/whisper-status").status_code == 405
    assert answer(client.get("/nope")) == (404, {"message": "Not Found"})
    assert client.get("/whisper-status/").status_code == 404


def test_submit_accepted(client: httpx.Client, emu: LLMWhispererEmulator) -> None:
    response = submit(client)  # like the official client: no Content-Type at all
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        "message": "Whisper Job Accepted",
        "status": "processing",
        "whisper_hash": body["whisper_hash"],
    }
    assert HASH_FORMAT.match(body["whisper_hash"])
    typed = client.post(
        "/whisper", content=DOC, headers={"Content-Type": "application/octet-stream"}
    )
    assert whisper_hash(typed) != body["whisper_hash"]
    assert emu.stats().whispers_created == 2


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"mode": "ocr"}, "mode"),
        ({"output_mode": "markdown"}, "output_mode"),
        ({"line_splitter_strategy": "top-priority"}, "line_splitter_strategy"),
        ({"add_line_nos": "yes"}, "add_line_nos"),
        ({"url_in_post": "1"}, "url_in_post"),
        ({"median_filter_size": "1.5"}, "median_filter_size"),
        ({"horizontal_stretch_factor": "wide"}, "horizontal_stretch_factor"),
        ({"line_splitter_tolerance": "nan"}, "line_splitter_tolerance"),
        ({"word_confidence_threshold": "2"}, "word_confidence_threshold"),
        ({"pages_to_extract": "3-1"}, "pages_to_extract"),
        ({"pages_to_extract": "0"}, "pages_to_extract"),
        ({"pages_to_extract": "1,,2"}, "pages_to_extract"),
    ],
)
def test_bad_option_is_400(
    client: httpx.Client, emu: LLMWhispererEmulator, params: dict[str, str], name: str
) -> None:
    response = submit(client, **params)
    assert response.status_code == 400
    assert list(response.json()) == ["message"] and name in response.json()["message"]
    assert emu.stats().whispers_created == 0


def test_unknown_keys_and_empty_values_are_ignored(client: httpx.Client) -> None:
    params = {
        "line_spitter_strategy": "bogus",
        "filename": "x",
        "mode": "",
        "use_webhook": "",
        "pages_to_extract": "",
    }
    assert submit(client, **params, add_line_nos="TRUE", url_in_post="False").status_code == 202


def test_empty_body_is_400(client: httpx.Client) -> None:
    assert submit(client, b"").status_code == 400
    assert submit(client, b"  ", url_in_post="true").status_code == 400


def test_a_chunked_document_reads_as_empty(client: httpx.Client) -> None:
    response = client.post("/whisper", content=iter([DOC]))
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 400
    assert "Empty request body" in response.json()["message"]


# -- status progression and retrieve, both generations -----------------------------------


def test_current_generation_lifecycle(client: httpx.Client, clock: FakeClock) -> None:
    hash_ = whisper_hash(submit(client))
    seen = [answer(status(client, hash_))]
    assert answer(retrieve(client, hash_)) == (400, {"message": "Whisper not ready : accepted"})
    for step in (0.3, 0.3, 0.2):
        clock.advance(step)
        seen.append(answer(status(client, hash_)))
    assert answer(retrieve(client, hash_)) == (400, {"message": "Whisper not ready : processing"})
    clock.advance(0.2)
    seen.append(answer(status(client, hash_)))
    page = {"message": "extraction_success", "execution_time_in_seconds": 1}
    assert seen == [
        (200, {"status": "accepted", "message": "Whisper Job Accepted", "detail": []}),
        (200, {"status": "processing", "message": "Whisper Job Processing", "detail": []}),
        (200, {"status": "processing", "message": "Whisper Job Processing", "detail": []}),
        (
            200,
            {
                "status": "processing",
                "message": "Whisper Job Processing",
                "detail": [{"page_no": 1, **page}],
            },
        ),
        (
            200,
            {
                "status": "processed",
                "message": "Whisper Job Processed",
                "detail": [{"page_no": 1, **page}, {"page_no": 2, **page}],
            },
        ),
    ]
    assert retrieve(client, hash_).status_code == 200
    assert answer(status(client, hash_))[1]["status"] == "retrieved"
    assert status(client, hash_).status_code == 200
    assert answer(retrieve(client, hash_)) == (400, {"message": "Whisper already delivered"})


def test_legacy_generation_lifecycle(attach: Attach, clock: FakeClock) -> None:
    emu = make_emulator(clock, "legacy")
    assert emu.status_generation is StatusGeneration.LEGACY
    client = attach(emu)
    hash_ = whisper_hash(submit(client))
    seen = [answer(status(client, hash_))]
    for step in (0.3, 0.3):
        clock.advance(step)
        seen.append(answer(status(client, hash_)))
    assert answer(retrieve(client, hash_)) == (
        400,
        {"message": "Whisper not ready : stage_extraction"},
    )
    clock.advance(0.5)
    seen.append(answer(status(client, hash_)))
    assert seen == [
        (200, {"status": "accepted"}),
        (200, {"status": "processing"}),
        (200, {"status": "stage_extraction"}),
        (200, {"status": "processed"}),
    ]
    assert retrieve(client, hash_).status_code == 200
    assert answer(status(client, hash_)) == (
        400,
        {"status": "retrieved", "message": "Whisper Job Retrieved"},
    )
    assert answer(retrieve(client, hash_)) == (400, {"message": "Whisper already delivered"})
    assert answer(status(client, "nope|x")) == (
        200,
        {"status": "unknown", "message": NOT_FOUND},
    )
    assert answer(retrieve(client, "nope|x")) == (400, {"message": "Whisper not found"})


def test_legacy_variants_error_status_and_delivered(attach: Attach, clock: FakeClock) -> None:
    emu = make_emulator(
        clock, "B", legacy_failed_status="error_extraction", legacy_retrieved_status="delivered"
    )
    client = attach(emu)
    bad = whisper_hash(submit(client, b"x EMULATOR-FAIL x"))
    good = whisper_hash(submit(client))
    clock.advance(1.0)
    code, body = answer(status(client, bad))
    assert code == 400 and body["status"] == "error_extraction" and "error" in body["message"]
    assert retrieve(client, good).status_code == 200
    assert answer(status(client, good)) == (200, {"status": "delivered"})
    assert answer(retrieve(client, good)) == (400, {"message": "Whisper already delivered"})


def test_bad_generation_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="generation"):
        LLMWhispererEmulator(status_generation="newest")
    with pytest.raises(ValueError, match="legacy_failed_status"):
        LLMWhispererEmulator(status_generation="legacy", legacy_failed_status="error_")
    with pytest.raises(ValueError, match="legacy_retrieved_status"):
        LLMWhispererEmulator(status_generation="legacy", legacy_retrieved_status="gone")


def test_failure_current(client: httpx.Client, clock: FakeClock, emu: LLMWhispererEmulator) -> None:
    emu.fail_glob = "*.bad.pdf"
    marked = whisper_hash(submit(client, b"%PDF EMULATOR-FAIL"))
    named = whisper_hash(submit(client, file_name="scan.bad.pdf"))
    fine = whisper_hash(submit(client, file_name="scan.pdf"))
    clock.advance(1.0)
    for hash_ in (marked, named):
        code, body = answer(status(client, hash_))
        assert (code, body["status"], body["detail"]) == (200, "error", [])
        assert "error" in body["message"]
        assert answer(retrieve(client, hash_)) == (400, {"message": "Whisper not ready : error"})
    assert answer(status(client, fine))[1]["status"] == "processed"
    assert emu.whisper_status(marked) == "error" and emu.whisper_status("nope") is None


def test_failure_legacy(attach: Attach, clock: FakeClock) -> None:
    client = attach(make_emulator(clock, "legacy"))
    hash_ = whisper_hash(submit(client, b"EMULATOR-FAIL"))
    clock.advance(1.0)
    code, body = answer(status(client, hash_))
    assert (code, body["status"]) == (200, "failed") and "error" in body["message"]
    assert answer(retrieve(client, hash_)) == (400, {"message": "Whisper not ready : failed"})


def test_unknown_hash_current(client: httpx.Client, emu: LLMWhispererEmulator) -> None:
    assert answer(status(client, "00000000|" + "0" * 32)) == (400, {"message": NOT_FOUND})
    assert answer(client.get("/whisper-status")) == (400, {"message": NOT_FOUND})
    assert answer(retrieve(client, "nope")) == (404, {"message": "Whisper job unknown"})
    assert answer(client.get("/whisper-detail", params={"whisper_hash": "nope"})) == (
        400,
        {"message": "Record not found"},
    )
    hash_ = whisper_hash(submit(client))
    assert emu.forget(hash_) and not emu.forget(hash_)
    assert answer(status(client, hash_)) == (400, {"message": NOT_FOUND})


# -- result shape --------------------------------------------------------------------------

LAYOUTS = [
    (
        b"Hello   world\n  indented\n\fsecond page\n",
        {},
        "Hello   world\n  indented\n<<<\nsecond page\n<<<\n",
    ),
    (
        b"Hello   world\n  indented\n\fsecond page\n",
        {"output_mode": "text"},
        "Hello world\nindented\n<<<\nsecond page\n<<<\n",
    ),
    (b"one\ftwo\fthree\f", {"page_seperator": "#"}, "one\n#\ntwo\n#\nthree\n#\n"),
    (b"one\ftwo", {"page_separator": "==", "page_seperator": "#"}, "one\n==\ntwo\n==\n"),
    (b"one\ftwo\fthree\ffour", {"pages_to_extract": "2,4-"}, "two\n<<<\nfour\n<<<\n"),
    (b"one\ftwo", {"pages_to_extract": "5-9"}, ""),
    (b"caf\xe9\r\nbar", {}, "caf\ufffd\nbar\n<<<\n"),
]


@pytest.mark.parametrize(("body", "params", "text"), LAYOUTS)
def test_result_text(
    client: httpx.Client, clock: FakeClock, body: bytes, params: dict[str, str], text: str
) -> None:
    hash_ = whisper_hash(submit(client, body, **params))
    clock.advance(1.0)
    result = retrieve(client, hash_).json()
    assert set(result) == {
        "result_text",
        "confidence_metadata",
        "line_metadata",
        "metadata",
        "webhook_metadata",
    }
    assert result["result_text"] == text
    assert result["confidence_metadata"] == [[] for _ in text.splitlines()]
    assert (result["line_metadata"], result["metadata"], result["webhook_metadata"]) == ([], {}, "")


def test_line_metadata_webhook_metadata_and_text_only(
    client: httpx.Client, clock: FakeClock
) -> None:
    with_lines = whisper_hash(
        submit(client, b"a\nb\fc", add_line_nos="true", webhook_metadata="job-7")
    )
    plain = whisper_hash(submit(client, b"a\nb\fc"))
    clock.advance(1.0)
    result = retrieve(client, with_lines).json()
    assert result["webhook_metadata"] == "job-7"
    assert result["line_metadata"] == [
        [0, 50, 50, 3168],
        [0, 100, 50, 3168],
        [0, 0, 0, 0],
        [1, 50, 50, 3168],
        [1, 0, 0, 0],
    ]
    response = retrieve(client, plain, text_only="True")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert response.text == "a\nb\n<<<\nc\n<<<\n"
    assert retrieve(client, plain).status_code == 400  # text_only consumed it too


def test_url_modes(client: httpx.Client, clock: FakeClock) -> None:
    in_post = whisper_hash(submit(client, b"https://example.com/a.pdf", url_in_post="true"))
    legacy = whisper_hash(client.post("/whisper", params={"url": "https://example.com/b.pdf"}))
    clock.advance(1.0)
    assert retrieve(client, in_post).json()["result_text"] == "https://example.com/a.pdf\n<<<\n"
    assert "b.pdf" in retrieve(client, legacy).json()["result_text"]


def test_detail_and_usage(client: httpx.Client, clock: FakeClock) -> None:
    first = whisper_hash(submit(client, DOC, mode="native_text", tag="invoices"))
    whisper_hash(submit(client, b"x"))
    whisper_hash(submit(client, b"EMULATOR-FAIL", mode="table"))
    detail = client.get("/whisper-detail", params={"whisper_hash": first}).json()
    assert detail["completed_at"] is None and detail["processed_pages"] == 0
    clock.advance(1.5)
    retrieve(client, first)
    detail = client.get("/whisper-detail", params={"whisper_hash": first}).json()
    assert {
        k: detail[k]
        for k in (
            "whisper_hash",
            "mode",
            "tag",
            "total_pages",
            "requested_pages",
            "processed_pages",
        )
    } == {
        "whisper_hash": first,
        "mode": "native_text",
        "tag": "invoices",
        "total_pages": 2,
        "requested_pages": 2,
        "processed_pages": 2,
    }
    assert detail["completed_at"].endswith(" GMT") and detail["processing_time_in_seconds"] == 1.0
    assert detail["upload_file_size_in_kb"] == round(len(DOC) / 1024, 3)
    usage = client.get("/get-usage-info").json()
    assert usage["current_page_count"] == usage["today_page_count"] == 3
    assert (
        usage["current_page_count_native_text"],
        usage["current_page_count_form"],
        usage["current_page_count_table"],
    ) == (2, 1, 0)
    assert usage["daily_quota"] == -1 and usage["overage_page_count"] == 0


# -- faults --------------------------------------------------------------------------------


def test_fault_post_error_before_create(client: httpx.Client, emu: LLMWhispererEmulator) -> None:
    emu.faults.post_error_before_create = 1
    assert answer(submit(client)) == (500, {"message": "Internal Server Error"})
    assert emu.stats().whispers_created == 0
    assert submit(client).status_code == 202


def test_fault_post_error_after_create(
    client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock
) -> None:
    emu.faults.post_error_after_create = 1
    assert submit(client, b"created anyway").status_code == 500
    clock.advance(1.0)
    stats = emu.stats()
    assert stats.whispers_created == 1 and len(stats.completed_at) == 1
    assert stats.posts_by_sha256 == {hashlib.sha256(b"created anyway").hexdigest(): 1}


def test_fault_post_drop_after_create(client: httpx.Client, emu: LLMWhispererEmulator) -> None:
    emu.faults.post_drop_after_create = 1
    with pytest.raises(httpx.TransportError):
        submit(client)
    assert emu.stats().whispers_created == 1
    assert submit(client).status_code == 202


def test_fault_proxy_html_and_rate_limited(client: httpx.Client, emu: LLMWhispererEmulator) -> None:
    emu.set_faults(proxy_html=1, rate_limited=1, retry_after_seconds=3)
    response = submit(client)
    assert response.status_code == 502 and response.headers["content-type"].startswith("text/html")
    response = status(client, "x")
    assert answer(response)[0] == 429 and response.headers["retry-after"] == "3"
    stats = emu.stats()
    assert (stats.whispers_created, stats.rate_limited, stats.posts, stats.status_gets) == (
        0,
        1,
        1,
        1,
    )
    assert submit(client).status_code == 202


def test_fault_status_error_has_no_side_effect(
    client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock
) -> None:
    hash_ = whisper_hash(submit(client))
    clock.advance(1.0)
    emu.faults.status_error = 1
    assert answer(status(client, hash_)) == (500, {"message": "Internal Server Error"})
    assert answer(status(client, hash_))[1]["status"] == "processed"


def test_fault_retrieve_error_before_delete_keeps_text(
    client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock
) -> None:
    hash_ = whisper_hash(submit(client))
    clock.advance(1.0)
    emu.faults.retrieve_error_before_delete = 1
    assert retrieve(client, hash_).status_code == 500
    assert retrieve(client, hash_).json()["result_text"].startswith("first page")


def test_fault_retrieve_error_after_delete_loses_text(
    client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock
) -> None:
    hash_ = whisper_hash(submit(client))
    emu.faults.retrieve_error_after_delete = 1
    assert retrieve(client, hash_).status_code == 400  # not ready: the knob is not used up
    assert emu.faults.retrieve_error_after_delete == 1
    clock.advance(1.0)
    assert answer(retrieve(client, hash_)) == (500, {"message": "Internal Server Error"})
    assert answer(status(client, hash_))[1]["status"] == "retrieved"
    assert answer(retrieve(client, hash_)) == (400, {"message": "Whisper already delivered"})
    assert emu.stats().deliveries == 1


def test_fault_retrieve_drop_after_delete(
    client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock
) -> None:
    hash_ = whisper_hash(submit(client))
    clock.advance(1.0)
    emu.faults.retrieve_drop_after_delete = 1
    with pytest.raises(httpx.TransportError):
        retrieve(client, hash_)
    assert answer(status(client, hash_))[1]["status"] == "retrieved"


def test_fault_slow_unauthorized_and_stall(
    client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock
) -> None:
    emu.faults.slow_seconds = 0.1
    started = time.monotonic()
    before = whisper_hash(submit(client))
    assert time.monotonic() - started >= 0.1
    emu.set_faults(slow_seconds=0, unauthorized=True)
    assert answer(status(client, before)) == (
        401,
        {"message": "The API key is missing or not valid."},
    )
    emu.set_faults(unauthorized=False, stall=True)
    stalled = whisper_hash(submit(client))
    clock.advance(3600)
    assert answer(status(client, stalled))[1] == {
        "status": "processing",
        "message": "Whisper Job Processing",
        "detail": [],
    }
    assert answer(status(client, before))[1]["status"] == "processed"
    assert stalled not in emu.stats().completed_at


def test_fault_webhook_retries_exceeded_legacy(attach: Attach, clock: FakeClock) -> None:
    emu = make_emulator(clock, "legacy")
    client = attach(emu)
    emu.set_faults(webhook_retries_exceeded=1)
    gave_up = whisper_hash(submit(client))
    normal = whisper_hash(submit(client))
    assert emu.faults.webhook_retries_exceeded == 0  # used up by the first whisper created
    assert answer(status(client, gave_up)) == (200, {"status": "accepted"})
    clock.advance(1.0)
    assert answer(status(client, gave_up)) == (200, {"status": "webhook_retries_exceeded"})
    assert emu.whisper_status(gave_up) == "webhook_retries_exceeded"
    assert answer(status(client, normal)) == (200, {"status": "processed"})
    # still available for manual retrieval (seed page), once
    assert retrieve(client, gave_up).json()["result_text"].startswith("first page")
    assert answer(status(client, gave_up))[1]["status"] == "retrieved"
    assert answer(retrieve(client, gave_up)) == (400, {"message": "Whisper already delivered"})


def test_fault_webhook_retries_exceeded_is_processed_in_the_current_generation(
    client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock
) -> None:
    emu.set_faults(webhook_retries_exceeded=1)
    hash_ = whisper_hash(submit(client))
    clock.advance(1.0)
    assert answer(status(client, hash_))[1]["status"] == "processed"  # no such status in A
    assert retrieve(client, hash_).status_code == 200


def test_mounted_controls_over_http(emu: LLMWhispererEmulator) -> None:
    with EmulatorServer(UnstractEmulator()) as server, httpx.Client(timeout=10) as http:
        mount_llmwhisperer(server, emu)
        control = f"{server.base_url}/_emulator/llmwhisperer"
        changes = {"status_error": 2, "slow_seconds": 0.01, "stall": False}
        response = http.post(f"{control}/faults", json=changes)
        assert response.status_code == 200 and response.json()["status_error"] == 2
        assert emu.faults.status_error == 2 and emu.faults.slow_seconds == 0.01
        for bad in (
            {"status_eror": 1},
            {"proxy_html": -1},
            {"proxy_html": True},
            {"stall": 1},
            {"slow_seconds": "x"},
            {"webhook_retries_exceeded": 1.5},
        ):
            assert answer(http.post(f"{control}/faults", json=bad))[0] == 400
        assert http.post(f"{control}/faults", content=b"[1]").status_code == 400
        assert http.get(f"{control}/faults").json()["status_error"] == 2
        assert emu.set_faults(status_error=0, slow_seconds=0).status_error == 0
        headers = {"unstract-key": KEY}
        url = f"{llmwhisperer_url(server)}/whisper"
        assert http.post(url, content=b"x", headers=headers).status_code == 202
        assert http.get(f"{control}/stats").json()["whispers_created"] == 1
        assert "get_error" in http.get(f"{server.base_url}/_emulator/faults").json()  # Unstract's


# -- stats, sharing a server, threads ------------------------------------------------------


def test_stats_counts(client: httpx.Client, emu: LLMWhispererEmulator, clock: FakeClock) -> None:
    created_at = clock.now
    first = whisper_hash(submit(client, b"A"))
    second = whisper_hash(submit(client, b"A"))
    whisper_hash(submit(client, b"B"))
    status(client, first)
    clock.advance(1.0)
    status(client, first)
    status(client, second)
    retrieve(client, first)
    retrieve(client, first)
    stats = emu.stats()
    assert (
        stats.posts,
        stats.whispers_created,
        stats.status_gets,
        stats.retrieves,
        stats.deliveries,
    ) == (3, 3, 3, 2, 1)
    assert stats.posts_by_sha256 == {
        hashlib.sha256(b"A").hexdigest(): 2,
        hashlib.sha256(b"B").hexdigest(): 1,
    }
    assert stats.status_gets_by_hash == {first: 2, second: 1}
    assert stats.retrieves_by_hash == {first: 2}
    assert set(stats.completed_at.values()) == {created_at + 1.0} and len(stats.completed_at) == 3
    assert stats.delivered_at == {first: created_at + 1.0}
    assert stats.max_in_flight == 3
    assert stats.as_json()["posts_by_sha256"] == dict(stats.posts_by_sha256)


def test_both_apis_on_one_server_in_real_time() -> None:
    llmw = llmwhisperer_demo_emulator(processing_seconds=0.05)
    with EmulatorServer(demo_emulator(execution_seconds=0.05)) as server:
        mount_llmwhisperer(server, llmw)
        unstract = httpx.post(
            server.deployment_url(DEMO_ORG, DEMO_API),
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
            files=[("files", ("a.txt", b"hello", "text/plain"))],
        )
        assert unstract.status_code == 200
        with httpx.Client(
            base_url=llmwhisperer_url(server), headers={"unstract-key": LLMW_DEMO_KEY}
        ) as http:
            hash_ = whisper_hash(submit(http, b"hello"))
            deadline = time.monotonic() + 5
            while (current := status(http, hash_).json()["status"]) != "processed":
                assert current in ("accepted", "processing") and time.monotonic() < deadline
                time.sleep(0.01)
            assert retrieve(http, hash_).json()["result_text"] == "hello\n<<<\n"


def test_concurrent_submits(client: httpx.Client, emu: LLMWhispererEmulator) -> None:
    hashes: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(base_url=client.base_url, headers={"unstract-key": KEY}) as http:
            found = [whisper_hash(submit(http, f"doc {n}-{i}".encode())) for i in range(5)]
        hashes.extend(found)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(hashes)) == 40
    stats = emu.stats()
    assert (stats.posts, stats.whispers_created, stats.max_in_flight) == (40, 40, 40)
