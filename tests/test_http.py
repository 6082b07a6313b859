"""The API clients' HTTP (watcher/http.py) over real loopback connections: what goes out is
what httpx would send, what comes back is decoded, and failures are httpx's errors."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from watcher.http import ApiHttp, multipart

ODD_NAMES = ['scan "1".pdf', "back\\slash.pdf", "new\nline.pdf", "Überweisung €.pdf"]


@pytest.mark.parametrize("file_name", ODD_NAMES)
def test_a_multipart_body_is_the_one_httpx_writes(file_name: str) -> None:
    data = {"timeout": "0", "tags": "a,b"}
    files = [("files", (file_name, b"%PDF-1.4 \x00\xff", "application/pdf"))]
    ours, content_type = multipart(data, files, boundary=b"b0undary")
    theirs = httpx.Request(
        "POST",
        "http://x/",
        data=data,
        files=files,
        headers={"Content-Type": content_type.decode()},
    )
    assert content_type == b"multipart/form-data; boundary=b0undary"
    assert b"".join(ours) == theirs.read()
    assert ours.size == len(theirs.read())


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
