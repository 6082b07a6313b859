"""One HTTP/1.1 connection to the emulator: bytes in, `Request` values out, one write per answer.

An asyncio protocol around httptools' parser (the C parser of Node.js), run on the server's
event loop. Apps run on the loop itself: they answer in tens of microseconds and never sleep
(a `Pending` answer is resumed by a timer), so there is no thread hop per request. Requests
on one connection are answered in order; the socket is written once per response.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from typing import Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import httptools

from .responses import Answer, Pending, Request, Response, std_error

SERVER_HEADER = f"unstract-emulator Python/{sys.version.split()[0]}"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Host(Protocol):
    """What a connection needs from its server."""

    log_requests: bool
    connections: set[Connection]

    def dispatch(self, request: Request) -> Answer:
        """The app's answer to `request` (a 500 if the app raised)."""
        ...

    def resume(self, step: Callable[[], Answer]) -> Answer:
        """The answer of a `Pending`'s next step (a 500 if it raised)."""
        ...


class Connection(asyncio.Protocol):
    """Parses requests as they arrive and answers them one after another."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[Request, bool]] = deque()  # parsed, not yet answered
        self.busy = False  # an answer is pending for the head of the queue
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but they implement Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.host.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing():
            return  # after a refused or a last request: nothing more is read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # also an Upgrade, which the emulator never accepts
            self._refuse()

    def close(self) -> None:
        """Drop the connection now, whatever it was doing (the server is stopping)."""
        if self.transport is not None:
            self.transport.abort()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # As http.server does for HTTP/1.1: ask for the body (curl waits a second for it).
        expect = self._headers.get("expect", "").lower()
        if expect == "100-continue" and self.parser.get_http_version() == "1.1":
            self._write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        # Django under a WSGI server reads a body by its Content-Length: one sent without it
        # (chunked) reads as empty, whatever arrived.
        body = self._body if "content-length" in self._headers else []
        request = _request(self.parser.get_method(), self._url, self._headers, body)
        self._body = []  # joined into the request: a big upload is held once, not twice
        self.queue.append((request, self.parser.should_keep_alive()))
        if not self.busy:
            self._answer_next()

    # -- answering -----------------------------------------------------------------------

    def _answer_next(self) -> None:
        while self.queue and not self.busy and not self._closing():
            request, keep_alive = self.queue[0]
            self._settle(request, keep_alive, self.host.dispatch(request))

    def _settle(self, request: Request, keep_alive: bool, answer: Answer) -> None:
        if isinstance(answer, Pending):
            self.busy = True
            loop = asyncio.get_running_loop()
            loop.call_later(answer.seconds, self._resume, request, keep_alive, answer.resume)
            return
        self.busy = False
        self.queue.popleft()
        self._send(request, keep_alive, answer)

    def _resume(self, request: Request, keep_alive: bool, resume: Callable[[], Answer]) -> None:
        # Also when the client went away meanwhile: the request still has its effects (an
        # execution created after a slow fault, results consumed by a synchronous wait), as
        # with the threaded server; only the answer is not written.
        self._settle(request, keep_alive, self.host.resume(resume))
        self._answer_next()

    def _send(self, request: Request, keep_alive: bool, response: Response) -> None:
        if self.host.log_requests:
            _log(self.transport, request, response)
        if response.drop:
            self.close()
            return
        self._write(head(response) + (b"" if request.method == "HEAD" else response.body))
        if not keep_alive:
            self._close_after_writing()

    def _refuse(self) -> None:
        """A request that does not parse: answer 400 and close, as the old server did."""
        self.queue.clear()
        response = std_error(400, "Malformed request body.", code="parse_error")
        self._write(head(response) + response.body)
        self._close_after_writing()

    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _write(self, data: bytes) -> None:
        if not self._closing():
            assert self.transport is not None
            self.transport.write(data)

    def _close_after_writing(self) -> None:
        if self.transport is not None:
            self.transport.close()  # flushes what was written, then closes


def _request(method: bytes, url: bytes, headers: dict[str, str], body: list[bytes]) -> Request:
    target = url.decode("latin-1")
    if target.startswith("//"):
        target = "/" + target.lstrip("/")  # as http.server does (gh-87389)
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    return Request(method.decode("latin-1"), unquote(parts.path), query, headers, b"".join(body))


# http.server's reason phrases: every HTTPStatus, and none for other codes.
_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def head(response: Response) -> bytes:
    """The status line and headers http.server sent: Server, Date, then the response's own."""
    status = response.status
    lines = [
        f"HTTP/1.1 {status} {_PHRASES.get(status, '')}",
        f"Server: {SERVER_HEADER}",
        f"Date: {_http_date(int(time.time()))}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@lru_cache(maxsize=2)  # formatting costs more than the rest of the head
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def _log(transport: asyncio.Transport | None, request: Request, response: Response) -> None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    address = peer[0] if peer else "-"
    when = time.strftime("%d/%b/%Y %H:%M:%S")
    status = response.status or "dropped"
    sys.stderr.write(f'{address} - - [{when}] "{request.method} {request.path}" {status} -\n')
