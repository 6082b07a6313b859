"""The API clients' HTTP: httpcore's connection pool (keep-alive, timeouts, TLS), the layer
under httpx, with requests made of the bytes they go out as.

httpx's client layer (cookies, redirects, auth flows) cost a third of each request's CPU, and
its request and response models most of the rest: every request parsed its URL again and
normalised every header. Here the base URL is parsed once, the headers are encoded once, and
a form's multipart body is laid out here as httpx builds it. A body is never assembled in
memory: its parts (a document among them) are read as they go out, in chunks, after a
Content-Length computed up front (never chunked transfer encoding: the Unstract backend, Django
under WSGI, would read such a body as empty). Errors are httpx's (the clients
classify those), mapped from httpcore's as httpx maps them; a redirect is an answer to
classify, never to follow. A test may pass an httpx transport (`httpx.MockTransport`): the
same bytes then go through it.
"""

from __future__ import annotations

import re
import secrets
import ssl
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol
from urllib.parse import urlencode

import httpcore
import httpx

USER_AGENT = "unstract-watcher"
# Over plain HTTP no TLS is ever set up: a context without the CA bundle (loading it costs
# about 18 ms and 0.8 MiB a pool). Every path is relative to the base URL, and a redirect is
# never followed, so no request leaves for https; one that did would fail verification.
_PLAIN_HTTP = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
KEEPALIVE_SECONDS = 5.0  # httpx's default: an idle connection is closed after this

# httpcore's errors as httpx raises them (httpx maps them by the same names).
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = tuple(
    (getattr(httpcore, name), getattr(httpx, name))
    for name in (  # most specific first
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "TimeoutException",
        "ConnectError",
        "ReadError",
        "WriteError",
        "NetworkError",
        "ProxyError",
        "UnsupportedProtocol",
        "LocalProtocolError",
        "RemoteProtocolError",
        "ProtocolError",
    )
)
# What HTML5 forms (and httpx) escape in a multipart part's name and filename.
_FORM_ESCAPES = {'"': "%22", "\\": "\\\\"} | {chr(c): f"%{c:02X}" for c in range(32) if c != 27}
_FORM_ESCAPE = re.compile("|".join(re.escape(c) for c in _FORM_ESCAPES))

# Neighbouring small pieces of a body (a part's head, a small document) go out as one write of
# up to this many bytes; a bigger piece goes out as it is.
WRITE_BYTES = 256 * 1024


class Streamed(Protocol):
    """Bytes read as they go out, in chunks, their number known before the first is sent.

    `chunks` may raise (a document that changed while it was read): the request is then
    abandoned before its last byte and the exception reaches the caller of `post`."""

    @property
    def size(self) -> int: ...

    def chunks(self) -> Iterator[bytes]: ...


Part = bytes | Streamed
Files = Sequence[tuple[str, tuple[str, Part, str]]]  # (part name, (file name, content, type))


class Body:
    """A request body made of parts, read as it is sent and never joined whole; its size is
    known up front. Iterating again reads the parts again."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self.parts = parts
        self.size = sum(len(p) if isinstance(p, bytes) else p.size for p in parts)

    def __iter__(self) -> Iterator[bytes]:
        pending: list[bytes] = []  # small pieces, joined into one write
        held = 0
        for piece in self._pieces():
            if pending and held + len(piece) > WRITE_BYTES:
                yield b"".join(pending)
                pending, held = [], 0
            if len(piece) >= WRITE_BYTES:
                yield piece
            else:
                pending.append(piece)
                held += len(piece)
        if pending:
            yield b"".join(pending)

    def _pieces(self) -> Iterator[bytes]:
        for part in self.parts:
            if isinstance(part, bytes):
                yield part
            else:
                yield from part.chunks()


class Answer:
    """A response, read whole."""

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]], content: bytes):
        self.status_code = status_code
        self.raw_headers = raw_headers
        self.content = content

    @property
    def headers(self) -> httpx.Headers:
        return httpx.Headers(self.raw_headers)


class ApiHttp:
    """Requests to one API's base URL over one pool of keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base = httpx.URL(base_url)
        self._targets: dict[str, bytes] = {}  # path -> the request target under the base
        common = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "User-Agent": USER_AGENT}
        # As httpx writes it: an IPv6 address in brackets (httpcore's own would have none).
        host = {"Host": self._base.netloc.decode("ascii")}
        self._headers = _encoded({**host, **common, **headers})
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._extensions = {"timeout": timeout.as_dict()}
        self._transport = transport
        https = self._base.scheme == "https"
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context() if https else _PLAIN_HTTP,
            max_connections=max_connections,
            keepalive_expiry=KEEPALIVE_SECONDS,
        )

    def get(self, path: str = "", params: Mapping[str, str] | None = None) -> Answer:
        return self._send("GET", self._target(path, params), self._headers, None)

    def post(
        self,
        path: str = "",
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: Part | None = None,
        data: Mapping[str, str] | None = None,
        files: Files | None = None,
    ) -> Answer:
        sent = self._headers + _encoded(headers or {})
        if files is not None or data is not None:
            body, content_type = multipart(data or {}, files or ())
            sent.append((b"Content-Type", content_type))
        else:
            body = Body(() if content is None else (content,))
        sent.append((b"Content-Length", str(body.size).encode()))
        return self._send("POST", self._target(path, params), sent, body)

    def close(self) -> None:
        self._pool.close()

    def _target(self, path: str, params: Mapping[str, str] | None) -> bytes:
        target = self._targets.get(path)
        if target is None:
            target = self._targets[path] = self._base.join(path).raw_path
        if not params:
            return target
        return target + (b"&" if b"?" in target else b"?") + urlencode(params).encode("ascii")

    def _send(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Body | None
    ) -> Answer:
        if self._transport is not None:
            return self._send_through_transport(method, target, headers, body)
        url = httpcore.URL(
            scheme=self._base.raw_scheme,
            host=self._base.raw_host,
            port=self._base.port,
            target=target,
        )
        content = None if body is None else iter(body)
        with _as_httpx_errors():
            response = self._pool.request(
                method, url, headers=headers, content=content, extensions=self._extensions
            )
        encoding = _header(response.headers, b"content-encoding")
        return Answer(response.status, response.headers, _decoded(response.content, encoding))

    def _send_through_transport(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Body | None
    ) -> Answer:
        url = self._base.copy_with(raw_path=target)
        request = httpx.Request(
            method, url, headers=headers, content=body, extensions=self._extensions
        )
        response = self._transport.handle_request(request)  # type: ignore[union-attr]
        try:
            response.read()
        finally:
            response.close()
        return Answer(response.status_code, list(response.headers.raw), response.content)


def multipart(
    data: Mapping[str, str], files: Files, boundary: bytes | None = None
) -> tuple[Body, bytes]:
    """A multipart/form-data body and its Content-Type, as httpx writes one: the form's
    fields, then one part per file. The files' contents are parts of the body as they are,
    between joined heads; the closing boundary comes after the last file's last byte."""
    boundary = boundary or secrets.token_hex(16).encode("ascii")
    head: list[bytes] = []  # what comes before the next file's content
    parts: list[Part] = []
    for name, value in data.items():
        disposition = _form_param("name", name)
        head += [b"--", boundary, b"\r\nContent-Disposition: form-data; ", disposition]
        head += [b"\r\n\r\n", value.encode(), b"\r\n"]
    for name, (file_name, content, content_type) in files:
        disposition = _form_param("name", name) + b"; " + _form_param("filename", file_name)
        head += [b"--", boundary, b"\r\nContent-Disposition: form-data; ", disposition]
        head += [b"\r\nContent-Type: ", content_type.encode(), b"\r\n\r\n"]
        parts += [b"".join(head), content]
        head = [b"\r\n"]
    head += [b"--", boundary, b"--\r\n"]
    parts.append(b"".join(head))
    return Body(parts), b"multipart/form-data; boundary=" + boundary


def _form_param(name: str, value: str) -> bytes:
    escaped = _FORM_ESCAPE.sub(lambda match: _FORM_ESCAPES[match.group(0)], value)
    return f'{name}="{escaped}"'.encode()


def _encoded(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key.lower() == name:
            return value.strip().lower()
    return b""


def _decoded(content: bytes, encoding: bytes) -> bytes:
    """The body as sent before the Content-Encoding we asked for (gzip, deflate) was applied."""
    try:
        if encoding == b"gzip":
            return zlib.decompress(content, zlib.MAX_WBITS | 16)
        if encoding == b"deflate":
            try:
                return zlib.decompress(content)
            except zlib.error:  # raw deflate, without the zlib wrapper (as some servers send)
                return zlib.decompress(content, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise httpx.DecodingError(f"the response body is not valid {encoding.decode()}") from exc
    return content


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _HTTPX_ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise
