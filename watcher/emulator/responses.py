"""Transport-neutral request and response values shared by the emulated APIs.

The emulated applications are functions from `Request` to an `Answer`: a `Response`, or
`Pending` when the answer must wait (a slow fault, a synchronous execution); `server.py`
turns sockets into these values and back, so the models never touch a socket or a clock's
sleep, and a waiting answer holds up no other request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"

# Django's production (DEBUG=False) page for a URL the router does not match (section 1).
DJANGO_404_HTML = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n'
    "<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n"
    "</body>\n</html>\n"
)

NGINX_502_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
NGINX_503_HTML = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class Request:
    """One HTTP request, already read from the socket."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # keys lower-cased
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query_value(self, name: str) -> str | None:
        """The last value of a query parameter, as Django's QueryDict returns it."""
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(frozen=True)
class Response:
    """What to send back; `drop=True` means close the connection without answering."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False


@dataclass(frozen=True)
class Pending:
    """No answer yet: the server calls `resume()` after `seconds` and sends what it returns."""

    seconds: float
    resume: Callable[[], Answer]


Answer = Response | Pending


def json_response(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode())


def html_response(status: int, page: str) -> Response:
    return Response(status, page.encode(), HTML_TYPE)


@dataclass(frozen=True)
class FieldError:
    """One entry of a drf-standardized-errors `errors` list."""

    detail: str
    attr: str | None = None
    code: str = "invalid"

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail, "attr": self.attr}


def _error_type(status: int) -> str:
    return "server_error" if status >= 500 else "client_error"


def std_error(status: int, detail: str, code: str = "error") -> Response:
    """drf-standardized-errors body for a plain APIException (section 7: code "error")."""
    body = {"type": _error_type(status), "errors": [FieldError(detail, None, code).as_json()]}
    return json_response(status, body)


def validation_error(errors: Sequence[FieldError]) -> Response:
    body = {"type": "validation_error", "errors": [e.as_json() for e in errors]}
    return json_response(400, body)


def server_error() -> Response:
    """An unhandled exception inside DRF (drf-standardized-errors 0.16 text, section 7)."""
    return std_error(500, "Server Error (500)")


def not_found_page() -> Response:
    return html_response(404, DJANGO_404_HTML)


def bad_gateway_page() -> Response:
    return html_response(502, NGINX_502_HTML)


def unavailable_page() -> Response:
    """A load balancer's page when no server stands behind it (the API's maintenance)."""
    return html_response(503, NGINX_503_HTML)


def dropped_connection() -> Response:
    return Response(0, drop=True)


def method_not_allowed(method: str) -> Response:
    return std_error(405, f'Method "{method}" not allowed.', code="method_not_allowed")
