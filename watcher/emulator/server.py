"""HTTP wiring for the emulated APIs: stdlib ThreadingHTTPServer, routed by path prefix.

Each emulated API is an `App` (a function from `Request` to `Response`) mounted under a
path prefix: the Unstract API deployment under `/deployment/api/`, the emulator's own
control endpoints under `/_emulator/`. LLMWhisperer v2 is added under `/api/v2/` (and its
controls under `/_emulator/llmwhisperer/`) with `mount_llmwhisperer`, which uses `mount`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .llmwhisperer import LLMWhispererEmulator, mount_llmwhisperer
from .responses import (
    FieldError,
    Request,
    Response,
    json_response,
    not_found_page,
    server_error,
    std_error,
    validation_error,
)
from .unstract import PATH_PREFIX, UnstractEmulator

App = Callable[[Request], Response]
CONTROL_PREFIX = "/_emulator/"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Handler threads may sit in keep-alive reads; stop() closes their sockets instead.
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], dispatch: App, log_requests: bool) -> None:
        self.dispatch = dispatch
        self.log_requests = log_requests
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_connections, self.connections = self.connections, set()
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is normal here (fault tests do it on purpose).
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    disable_nagle_algorithm = True
    server_version = "unstract-emulator"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(std_error(400, "Malformed request body.", code="parse_error"))
            return
        url = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=unquote(url.path),
            query=parse_qs(url.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        response = self.server.dispatch(request)
        if response.drop:
            self._drop()
        else:
            self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        return b"".join(chunks)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class EmulatorServer:
    """Serves an UnstractEmulator over HTTP on a daemon thread.

    The socket is bound in the constructor, so `base_url` is known before `start()`.
    """

    def __init__(
        self,
        emulator: UnstractEmulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_requests: bool = False,
    ) -> None:
        self.emulator = emulator
        self._routes: list[tuple[str, App]] = [
            (CONTROL_PREFIX, self._control),
            (PATH_PREFIX, emulator.handle),
        ]
        self._httpd = _HTTPServer((host, port), self._dispatch, log_requests)
        self._thread: threading.Thread | None = None

    def mount(self, prefix: str, app: App) -> None:
        """Route every path starting with `prefix` to `app` (longest prefix wins)."""
        self._routes.append((prefix, app))
        self._routes.sort(key=lambda route: len(route[0]), reverse=True)

    @property
    def host(self) -> str:
        host = str(self._httpd.server_address[0])
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deployment_url(self, org: str, api: str) -> str:
        return f"{self.base_url}{PATH_PREFIX}{org}/{api}/"

    def start(self) -> EmulatorServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"emulator:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve(self) -> None:
        """Serve in the calling thread until `stop()` is called from another thread."""
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving and close open connections; safe to call more than once."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._httpd.shutdown()
            thread.join()
        self._httpd.server_close()
        self._httpd.close_connections()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _dispatch(self, request: Request) -> Response:
        app = next((app for prefix, app in self._routes if request.path.startswith(prefix)), None)
        if app is None:
            return not_found_page()
        try:
            return app(request)
        except Exception:
            traceback.print_exc()  # an emulator bug: make it visible, answer like DRF
            return server_error()

    def _control(self, request: Request) -> Response:
        """GET /_emulator/stats, GET or POST /_emulator/faults (JSON body of knob values)."""
        path = request.path.rstrip("/")
        if path == "/_emulator/stats" and request.method == "GET":
            return json_response(200, self.emulator.stats().as_json())
        if path != "/_emulator/faults":
            return not_found_page()
        if request.method == "GET":
            return json_response(200, self.emulator.faults.as_json())
        if request.method != "POST":
            return std_error(405, f'Method "{request.method}" not allowed.', "method_not_allowed")
        try:
            changes = json.loads(request.body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of fault names to values")
            faults = self.emulator.set_faults(**changes)
        except ValueError as exc:
            return validation_error([FieldError(str(exc), "non_field_errors")])
        return json_response(200, faults.as_json())


def serve_forever(
    emulator: UnstractEmulator,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    on_ready: Callable[[str], None] | None = None,
    log_requests: bool = False,
    llmwhisperer: LLMWhispererEmulator | None = None,
) -> None:
    """Serve in the calling thread until interrupted; `on_ready` gets the base URL.

    With `llmwhisperer`, the same server also answers LLMWhisperer v2 under /api/v2/.
    """
    server = EmulatorServer(emulator, host, port, log_requests=log_requests)
    if llmwhisperer is not None:
        mount_llmwhisperer(server, llmwhisperer)
    if on_ready is not None:
        on_ready(server.base_url)
    try:
        server.serve()
    finally:
        server.stop()
