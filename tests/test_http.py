"""The API clients' HTTP (watcher/http.py) over real loopback connections: what goes out is
what httpx would send, what comes back is decoded, and failures are httpx's errors."""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from harness import wait_for

from watcher.http import WRITE_BYTES, ApiHttp, multipart

ODD_NAMES = ['scan "1".pdf', "back\\slash.pdf", "new\nline.pdf", "Überweisung €.pdf"]


@pytest.mark.parametrize("file_name", ODD_NAMES)
def test_a_multipart_body_is_the_one_httpx_writes(file_name: str) -> None:
    data = {"timeout": "0", "tags": "a,b"}
    files = [("files", (file_name, b"%PDF-1.4 \x00\xff", "application/pdf"))]
    ours, content_type = multipart(data, files, boundary=b"b0undary")
    theirs = httpx_body(data, files, content_type.decode())
    assert content_type == b"multipart/form-data; boundary=b0undary"
    assert b"".join(ours) == theirs and ours.size == len(theirs)


def httpx_body(data: dict[str, str], files: list[Any], content_type: str) -> bytes:
    """The multipart body httpx sends, with the boundary of `content_type`."""
    headers = {"Content-Type": content_type}
    return httpx.Request("POST", "http://x/", data=data, files=files, headers=headers).read()


class Gzipped(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        seen = {"path": self.path, "ua": self.headers["User-Agent"], "host": self.headers["Host"]}
        body = json.dumps(seen).encode()
        packed = gzip.compress(body)
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(packed)))
        self.end_headers()
        self.wfile.write(packed)

    def log_message(self, *args: object) -> None:
        pass


class ServerOnIPv6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(params=["127.0.0.1", "::1"])
def gzip_server(request: pytest.FixtureRequest) -> Iterator[str]:
    address = str(request.param)
    kind = ServerOnIPv6 if ":" in address else ThreadingHTTPServer
    server = kind((address, 0), Gzipped)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"[{address}]" if ":" in address else address
    yield f"http://{host}:{server.server_address[1]}/api/v2/"
    server.shutdown()
    server.server_close()


def http(url: str) -> ApiHttp:
    return ApiHttp(url, {"k": "v"}, connect_timeout=2, read_timeout=2, max_connections=2)


def test_a_gzipped_answer_is_decoded_and_the_query_is_sent(gzip_server: str) -> None:
    client = http(gzip_server)
    try:
        answer = client.get("status", params={"whisper_hash": "a+b/c=", "n": "1 2"})
    finally:
        client.close()
    assert answer.status_code == 200
    assert json.loads(answer.content) == {
        "path": "/api/v2/status?whisper_hash=a%2Bb%2Fc%3D&n=1+2",
        "ua": "unstract-watcher",
        "host": gzip_server.split("/")[2],  # an IPv6 address in brackets, as httpx sends it
    }


def test_a_refused_connection_is_httpxs_connect_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = http(f"http://127.0.0.1:{port}/")
    try:
        with pytest.raises(httpx.ConnectError):
            client.get()
    finally:
        client.close()


class Pieces:
    """A streamed part: `content` given out `step` bytes at a time, `before` called with
    each chunk's offset before that chunk is read."""

    def __init__(self, content: bytes, step: int, before: Callable[[int], None]) -> None:
        self.content = content
        self.step = step
        self.before = before

    @property
    def size(self) -> int:
        return len(self.content)

    def chunks(self) -> Iterator[bytes]:
        for offset in range(0, len(self.content), self.step):
            self.before(offset)
            yield self.content[offset : offset + self.step]


def test_a_streamed_file_is_laid_out_as_httpx_lays_out_its_bytes() -> None:
    data = {"timeout": "0"}
    contents = [b"%PDF-1.4 " + bytes(range(256)) * 5, b"", b"x" * (WRITE_BYTES + 3)]
    streamed = [
        ("files", (f"{i}.pdf", Pieces(c, 7, _nothing), "application/pdf"))
        for i, c in enumerate(contents)
    ]
    as_bytes = [("files", (f"{i}.pdf", c, "application/pdf")) for i, c in enumerate(contents)]
    ours, content_type = multipart(data, streamed, boundary=b"b0undary")
    theirs = httpx_body(data, as_bytes, content_type.decode())
    assert b"".join(ours) == theirs and ours.size == len(theirs)
    assert b"".join(ours) == theirs  # iterated again: read again
    assert max(len(piece) for piece in ours) <= WRITE_BYTES


def _nothing(offset: int) -> None:
    pass


class Receiver(BaseHTTPRequestHandler):
    """Reads a POST's body as it arrives, telling the test how far it got."""

    server: ReceivingServer

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        got = bytearray()
        while len(got) < length and (piece := self.rfile.read1(length - len(got))):
            got += piece
            self.server.progress(len(got))
        self.server.requests.append((dict(self.headers), bytes(got)))
        if len(got) < length:
            return  # the client went away before the end
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class ReceivingServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Receiver)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.received = 0  # bytes of the body being read
        self.changed = threading.Condition()

    def progress(self, received: int) -> None:
        with self.changed:
            self.received = received
            self.changed.notify_all()

    def has(self, count: int) -> bool:
        """Whether `count` bytes of the body arrive within 10 s."""
        with self.changed:
            return self.changed.wait_for(lambda: self.received >= count, 10)


@pytest.fixture
def receiver() -> Iterator[ReceivingServer]:
    server = ReceivingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_streamed_file_is_on_the_wire_before_its_end_is_read(receiver: ReceivingServer) -> None:
    """With a Content-Length, not chunked: the server has the first chunk before the
    second is read, and the body is the one httpx would send."""
    document = os.urandom(3 * WRITE_BYTES)
    waited: list[bool] = []

    def before(offset: int) -> None:
        if offset:  # the chunks before and the part's head went out: the server has them
            waited.append(receiver.has(offset))

    files = [("files", ("a.pdf", Pieces(document, WRITE_BYTES, before), "application/pdf"))]
    client = http(f"http://127.0.0.1:{receiver.server_address[1]}/")
    try:
        assert client.post(data={"timeout": "0"}, files=files).status_code == 200
    finally:
        client.close()
    assert waited == [True, True]
    headers, body = receiver.requests[0]
    assert "Transfer-Encoding" not in headers and int(headers["Content-Length"]) == len(body)
    as_bytes = [("files", ("a.pdf", document, "application/pdf"))]
    assert body == httpx_body({"timeout": "0"}, as_bytes, headers["Content-Type"])


class Changed(Exception):
    pass


def test_a_part_that_raises_abandons_the_request_before_its_last_byte(
    receiver: ReceivingServer,
) -> None:
    def before(offset: int) -> None:
        if offset == 2 * WRITE_BYTES:  # the last chunk
            raise Changed

    document = b"y" * (3 * WRITE_BYTES)
    files = [("files", ("a.pdf", Pieces(document, WRITE_BYTES, before), "application/pdf"))]
    client = http(f"http://127.0.0.1:{receiver.server_address[1]}/")
    try:
        with pytest.raises(Changed):
            client.post(files=files)
        assert client.post(content=b"next").status_code == 200  # the pool goes on
    finally:
        client.close()
    wait_for(lambda: len(receiver.requests) == 2, what="the server to see both requests")
    (headers, cut), (_, whole) = sorted(receiver.requests, key=lambda r: -len(r[1]))
    assert len(cut) < int(headers["Content-Length"]) and not cut.endswith(b"--\r\n")
    assert len(cut) <= 2 * WRITE_BYTES + 1024  # the part's head and two chunks at most
    assert whole == b"next"
