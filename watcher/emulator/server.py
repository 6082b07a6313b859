"""HTTP wiring for the emulated APIs: an asyncio server (uvloop, httptools), routed by prefix.

Each emulated API is an `App` (a function from `Request` to `Answer`) mounted under a path
prefix: the Unstract API deployment under `/deployment/api/`, the emulator's own control
endpoints under `/_emulator/`. LLMWhisperer v2 is added under `/api/v2/` (and its controls
under `/_emulator/llmwhisperer/`) with `mount_llmwhisperer`, which uses `mount`.

The server is one event loop on one thread: apps answer on the loop (connection.py), with no
thread hand-off or interpreter-lock contention per request. A POST+GET pair costs about 300 us
of CPU; the stdlib ThreadingHTTPServer it replaces needed about 550 us with the same body
parser (bench/run.py measures the pairs per second).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import traceback
from collections.abc import Callable
from types import TracebackType

import uvloop

from .connection import Connection
from .llmwhisperer import LLMWhispererEmulator, mount_llmwhisperer
from .responses import (
    Answer,
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

App = Callable[[Request], Answer]
CONTROL_PREFIX = "/_emulator/"


class EmulatorServer:
    """Serves an UnstractEmulator over HTTP, on a thread of its own (`start`) or the caller's.

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
        self.log_requests = log_requests
        self.connections: set[Connection] = set()  # touched on the loop's thread only
        self._routes: list[tuple[str, App]] = [
            (CONTROL_PREFIX, self._control),
            (PATH_PREFIX, emulator.handle),
        ]
        self._socket = socket.create_server((host, port))
        self._address = self._socket.getsockname()  # still known after stop()
        self._lock = threading.Lock()
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def mount(self, prefix: str, app: App) -> None:
        """Route every path starting with `prefix` to `app` (longest prefix wins)."""
        routes = [*self._routes, (prefix, app)]
        routes.sort(key=lambda route: len(route[0]), reverse=True)
        self._routes = routes  # one assignment: a running loop sees the old or the new list

    @property
    def host(self) -> str:
        host = str(self._address[0])
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def port(self) -> int:
        return int(self._address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deployment_url(self, org: str, api: str) -> str:
        return f"{self.base_url}{PATH_PREFIX}{org}/{api}/"

    def start(self) -> EmulatorServer:
        """Serve on a daemon thread; returns once the server accepts connections."""
        if self._thread is None:
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name=f"emulator:{self.port}", daemon=True
            )
            self._thread.start()
            ready.wait()
        return self

    def serve(self) -> None:
        """Serve in the calling thread until `stop()` is called from another thread."""
        self._run(threading.Event())

    def stop(self) -> None:
        """Stop serving and close open connections; safe to call more than once."""
        with self._lock:
            self._stop_requested = True
            loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stopped.set)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        self._socket.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._serve(ready))
        finally:
            ready.set()  # also when serving failed, so that start() does not wait forever

    async def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        with self._lock:
            self._loop, self._stopped = loop, stopped
            if self._stop_requested:
                stopped.set()
        server = await loop.create_server(lambda: Connection(self), sock=self._socket)
        ready.set()
        try:
            await stopped.wait()
        finally:
            server.close()
            for connection in list(self.connections):
                connection.close()
            await server.wait_closed()

    # -- routing -------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Answer:
        """The answer of the app mounted at the longest prefix of the path."""
        app = next((app for prefix, app in self._routes if request.path.startswith(prefix)), None)
        if app is None:
            return not_found_page()
        return self.resume(lambda: app(request))

    def resume(self, step: Callable[[], Answer]) -> Answer:
        """Run one step of an app; an exception becomes the 500 DRF would answer."""
        try:
            return step()
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
