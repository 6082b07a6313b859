"""The API clients' HTTP: httpx's transport (its connection pool, timeouts and errors), without
the `httpx.Client` layer above it.

That layer keeps a cookie jar, follows redirects, runs auth flows and event hooks: none of
our APIs uses any of it (a redirect is an answer to classify, never to follow), and it cost
about a third of each request's CPU, on the path every document takes twice.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

USER_AGENT = "unstract-watcher"
# Over plain HTTP no TLS is ever set up: a context without the CA bundle (loading it costs
# about 18 ms and 0.8 MiB a pool). Every path is relative to the base URL, and a redirect is
# never followed, so no request leaves for https; one that did would fail verification.
_PLAIN_HTTP = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


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
        self._urls: dict[str, httpx.URL] = {"": self._base}
        self._headers = {
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": USER_AGENT,
            **headers,
        }
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._extensions = {"timeout": timeout.as_dict()}
        self._transport = transport or httpx.HTTPTransport(
            verify=True if self._base.scheme == "https" else _PLAIN_HTTP,
            limits=httpx.Limits(max_connections=max_connections),
        )

    def get(self, path: str = "", params: Mapping[str, str] | None = None) -> httpx.Response:
        return self._send(httpx.Request("GET", self._url(path, params), **self._options()))

    def post(
        self,
        path: str = "",
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None,
    ) -> httpx.Response:
        request = httpx.Request(
            "POST",
            self._url(path, params),
            content=content,
            data=data,
            files=files,
            **self._options(headers),
        )
        request.read()  # one buffer: the multipart pieces would each be a send of their own
        return self._send(request)

    def close(self) -> None:
        self._transport.close()

    def _url(self, path: str, params: Mapping[str, str] | None) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._base.join(path)
        return url.copy_merge_params(params) if params else url

    def _options(self, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        merged = {**self._headers, **headers} if headers else self._headers
        return {"headers": merged, "extensions": self._extensions}

    def _send(self, request: httpx.Request) -> httpx.Response:
        response = self._transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response
