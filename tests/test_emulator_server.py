"""The emulator's HTTP server itself: waiting answers, stop(), and HTTP/1.1 over a raw socket."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from watcher.emulator import DEMO_API, DEMO_KEY, DEMO_ORG, EmulatorServer, demo_emulator

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(demo_emulator(execution_seconds=0.05)) as running:
        yield running


def wait_for(condition: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def stalled_sync_post(server: EmulatorServer, answers: list[int]) -> threading.Thread:
    """A POST that waits (timeout=30) for an execution that never ends, on a thread."""
    server.emulator.deployment(DEMO_ORG, DEMO_API).stall = True
    url = server.deployment_url(DEMO_ORG, DEMO_API)

    def post() -> None:
        try:
            files = {"files": ("s.txt", b"s")}
            response = httpx.post(url, headers=AUTH, files=files, data={"timeout": "30"})
            answers.append(response.status_code)
        except httpx.TransportError:
            answers.append(0)

    thread = threading.Thread(target=post)
    thread.start()
    wait_for(lambda: server.emulator.stats().executions_created == 1)
    return thread


def raw_exchange(server: EmulatorServer, data: bytes, expect: int) -> bytes:
    """Send `data`, read until `expect` answers (by their Content-Length) or the server closes."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < expect or not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _complete(received: bytes) -> bool:
    head, separator, body = received.rpartition(b"\r\n\r\n")
    length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    return bool(separator) and bool(length) and len(body) >= int(length[-1].split(b":")[1])


def test_a_waiting_answer_holds_up_no_other_request(server: EmulatorServer) -> None:
    answers: list[int] = []
    waiting = stalled_sync_post(server, answers)
    assert httpx.get(f"{server.base_url}/_emulator/stats").status_code == 200
    assert answers == [] and waiting.is_alive()  # still waiting, and the GET was answered
    server.stop()
    waiting.join()
    assert answers == [0]  # stop() dropped it rather than waiting 30 s


def test_stop_leaves_no_thread_and_frees_the_port() -> None:
    before = set(threading.enumerate())
    server = EmulatorServer(demo_emulator()).start()
    with httpx.Client() as client:
        assert client.get(f"{server.base_url}/_emulator/stats").status_code == 200
        server.stop()  # with the client's keep-alive connection still open
    assert set(threading.enumerate()) == before
    with socket.create_server((server.host, server.port)):
        pass


def test_expect_100_continue_then_the_answer(server: EmulatorServer) -> None:
    body = b'{"get_error": 0}'
    request = (
        b"POST /_emulator/faults HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    received = raw_exchange(server, request, 2)
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


def test_pipelined_requests_are_answered_in_order(server: EmulatorServer) -> None:
    get = b"GET /_emulator/%s HTTP/1.1\r\nHost: x\r\n\r\n"
    received = raw_exchange(server, get % b"nope" + get % b"stats" + get % b"faults", 3)
    statuses = re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", received)
    assert statuses == [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert b"Server: unstract-emulator" in received and b"Date: " in received


def test_a_request_that_does_not_parse_is_400_then_closed(server: EmulatorServer) -> None:
    received = raw_exchange(server, b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 1)
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Malformed request body." in received


def test_head_has_the_length_but_no_body(server: EmulatorServer) -> None:
    response = httpx.head(f"{server.base_url}/nowhere")
    assert response.status_code == 404 and response.content == b""
    assert int(response.headers["content-length"]) > 0
