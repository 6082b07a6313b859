"""The emulated LLMWhisperer API v2: submit, status, retrieve, detail and usage info.

Follows ../shared/api/llmwhisperer-v2.md; section numbers below refer to it.
`LLMWhispererEmulator.handle` maps a `Request` to an `Answer` (a `Pending` while a slow
fault holds it); no sockets, no sleeping here. Whispers
progress by the clock, so nothing runs in the background. Mount it on an `EmulatorServer`
with `mount_llmwhisperer`, next to the Unstract API deployment emulator.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .faults import WhisperFaults
from .responses import (
    Answer,
    Pending,
    Request,
    Response,
    bad_gateway_page,
    dropped_connection,
    json_response,
    unavailable_page,
)
from .stats import WhisperCounters, WhisperStats, usage_info
from .whisper_jobs import StatusDialect, StatusGeneration, Whisper, parse_generation
from .whisper_options import OptionError, WhisperOptions, parse_bool, parse_options
from .whisper_results import StagedDocument, stage_document

if TYPE_CHECKING:
    from .server import EmulatorServer

PATH_PREFIX = "/api/v2/"
CONTROL_PREFIX = "/_emulator/llmwhisperer/"
ACCEPTED_MESSAGE = "Whisper Job Accepted"
# Section 1.4 gives only the spec's descriptions of 401 and 403; they serve as the messages.
UNAUTHORIZED_MESSAGE = "The API key is missing or not valid."
FORBIDDEN_MESSAGE = "The key is valid but not entitled to this operation."
SERVER_ERROR_MESSAGE = "Internal Server Error"
RATE_LIMIT_MESSAGE = "Too many requests, please retry later"
EMPTY_BODY_MESSAGE = "Empty request body: send the document bytes, or a URL with url_in_post=true"
# The live error test only checks that the message contains "error" (section 1.1).
FAILURE_MESSAGE = "Extraction error: the document could not be processed (emulated failure)"
RECORD_NOT_FOUND_MESSAGE = "Record not found"
TEXT_TYPE = "text/plain; charset=utf-8"
_METHODS = {
    "whisper": "POST",
    "whisper-status": "GET",
    "whisper-retrieve": "GET",
    "whisper-detail": "GET",
    "get-usage-info": "GET",
}
_ERROR_FAULTS = {
    "whisper": "post_error_before_create",
    "whisper-status": "status_error",
    "whisper-retrieve": "retrieve_error_before_delete",
}

Clock = Callable[[], float]
Handler = Callable[[str, Request], Response]


def _message(status: int, text: str) -> Response:
    return json_response(status, {"message": text})


def _server_error() -> Response:
    return _message(500, SERVER_ERROR_MESSAGE)


class LLMWhispererEmulator:
    """In-memory LLMWhisperer v2 service; every method is thread-safe.

    `status_generation` picks the status answers (section 2.2): "current" (variant A) or
    "legacy" (variant B, the seed page); the legacy_* arguments pick among its variants.
    """

    def __init__(
        self,
        keys: Iterable[str] = (),
        processing_seconds: float = 0.5,
        status_generation: str = "current",
        *,
        legacy_failed_status: str = "failed",
        legacy_retrieved_status: str = "retrieved",
        fail_glob: str | None = None,
        unentitled_keys: Iterable[str] = (),
        clock: Clock = time.time,
    ) -> None:
        self.processing_seconds = processing_seconds
        self.fail_glob = fail_glob  # whispers whose file_name matches it fail
        self.dialect = StatusDialect(
            parse_generation(status_generation), legacy_failed_status, legacy_retrieved_status
        )
        self.faults = WhisperFaults()
        self._clock = clock
        self._lock = threading.Lock()
        self._keys = {key: True for key in keys} | {key: False for key in unentitled_keys}
        self._whispers: dict[str, Whisper] = {}
        self._in_flight: list[Whisper] = []  # pruned lazily
        self._pages_by_key: dict[str, Counter[str]] = {}
        self._counters = WhisperCounters()
        self._handlers: dict[str, Handler] = {
            "whisper": self._submit,
            "whisper-status": self._status,
            "whisper-retrieve": self._retrieve,
            "whisper-detail": self._detail,
            "get-usage-info": self._usage,
        }

    # -- configuration and inspection ----------------------------------------------------

    @property
    def status_generation(self) -> StatusGeneration:
        return self.dialect.generation

    def add_key(self, key: str, *, entitled: bool = True) -> None:
        """Accept `key`; an unentitled key authenticates but every call answers 403."""
        with self._lock:
            self._keys[key] = entitled

    def set_faults(self, **changes: Any) -> WhisperFaults:
        """Change fault knobs by name; raises ValueError for unknown names or bad values."""
        with self._lock:
            self.faults.update(changes)
            return WhisperFaults(**self.faults.as_json())

    def whisper_status(self, whisper_hash: str) -> str | None:
        """Peek at a whisper's status (as the chosen generation names it); None if unknown."""
        with self._lock:
            whisper = self._whispers.get(whisper_hash)
            if whisper is None:
                return None
            return self.dialect.status_of(whisper.phase(self._clock()), whisper.webhook_gave_up)

    def forget(self, whisper_hash: str) -> bool:
        """Drop a whisper, as an expired record: its hash is unknown from now on."""
        with self._lock:
            return self._whispers.pop(whisper_hash, None) is not None

    def stats(self) -> WhisperStats:
        """A frozen snapshot of the counters."""
        now = self._clock()
        with self._lock:
            completed_at = {
                whisper_hash: since
                for whisper_hash, whisper in self._whispers.items()
                if (since := whisper.finished_at(now)) is not None
            }
            delivered_at = {
                whisper_hash: whisper.retrieved_at
                for whisper_hash, whisper in self._whispers.items()
                if whisper.retrieved_at is not None
            }
            return self._counters.snapshot(completed_at, delivered_at)

    # -- request handling ----------------------------------------------------------------

    def handle(self, request: Request) -> Answer:
        """Answer one request to a `/api/v2/...` URL."""
        endpoint = request.path.removeprefix(PATH_PREFIX)
        allowed = _METHODS.get(endpoint) if request.path.startswith(PATH_PREFIX) else None
        if allowed is None:
            return _message(404, "Not Found")
        method = "GET" if request.method == "HEAD" else request.method
        if method != allowed:
            return _message(405, "Method Not Allowed")
        if (slow := self.faults.slow_seconds) > 0:
            return Pending(slow, lambda: self._answer(endpoint, request))
        return self._answer(endpoint, request)

    def _answer(self, endpoint: str, request: Request) -> Response:
        injected = self._inject_faults(endpoint, request)
        if injected is not None:
            return injected
        key = request.header("unstract-key") or ""
        with self._lock:
            entitled = self._keys.get(key)
        if entitled is None:
            return _message(401, UNAUTHORIZED_MESSAGE)
        if not entitled:
            return _message(403, FORBIDDEN_MESSAGE)
        return self._handlers[endpoint](key, request)

    def control(self, request: Request) -> Response:
        """GET /_emulator/llmwhisperer/stats, GET or POST .../faults (JSON of knob values)."""
        path = request.path.rstrip("/")
        if path == f"{CONTROL_PREFIX}stats" and request.method == "GET":
            return json_response(200, self.stats().as_json())
        if path != f"{CONTROL_PREFIX}faults":
            return _message(404, "Not Found")
        if request.method == "GET":
            with self._lock:
                return json_response(200, self.faults.as_json())
        if request.method != "POST":
            return _message(405, "Method Not Allowed")
        try:
            changes = json.loads(request.body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of fault names to values")
            faults = self.set_faults(**changes)
        except ValueError as exc:
            return _message(400, str(exc))
        return json_response(200, faults.as_json())

    def _inject_faults(self, endpoint: str, request: Request) -> Response | None:
        with self._lock:
            self._count_request(endpoint, request)
            if self.faults.take("proxy_html"):
                return bad_gateway_page()
            if self.faults.gateway_down:
                return unavailable_page()
            if self.faults.take("rate_limited"):
                self._counters.rate_limited += 1
                retry_after = (("Retry-After", str(self.faults.retry_after_seconds)),)
                return dataclasses.replace(_message(429, RATE_LIMIT_MESSAGE), headers=retry_after)
            if self.faults.unauthorized:
                return _message(401, UNAUTHORIZED_MESSAGE)
            kind = _ERROR_FAULTS.get(endpoint)
            if kind is not None and self.faults.take(kind):
                return _server_error()
        return None

    def _count_request(self, endpoint: str, request: Request) -> None:
        whisper_hash = request.query_value("whisper_hash")
        counters = self._counters
        if endpoint == "whisper":
            counters.posts += 1
        elif endpoint == "whisper-status":
            counters.status_gets += 1
            if whisper_hash:
                counters.status_gets_by_hash[whisper_hash] += 1
        elif endpoint == "whisper-retrieve":
            counters.retrieves += 1
            if whisper_hash:
                counters.retrieves_by_hash[whisper_hash] += 1

    # -- POST /whisper -------------------------------------------------------------------

    def _submit(self, key: str, request: Request) -> Response:
        try:
            options = parse_options(request)
        except OptionError as exc:
            return _message(400, str(exc))
        content = _document(request.body, options)
        if not content:
            return _message(400, EMPTY_BODY_MESSAGE)
        staged = stage_document(content, options, self.fail_glob)
        with self._lock:
            whisper = self._create(key, options, staged)
            if self.faults.take("post_error_after_create"):
                return _server_error()
            if self.faults.take("post_drop_after_create"):
                return dropped_connection()
        # Section 1.3: the accepted body says "processing" while the status API says "accepted".
        body = {"message": ACCEPTED_MESSAGE, "status": "processing", "whisper_hash": whisper.hash}
        return json_response(202, body)

    def _create(self, key: str, options: WhisperOptions, staged: StagedDocument) -> Whisper:
        now = self._clock()
        seconds = self.processing_seconds
        whisper = Whisper(
            hash=self._new_hash(staged.sha256),
            key=key,
            options=options,
            size=staged.size,
            total_pages=staged.total_pages,
            requested_pages=staged.requested_pages,
            created_at=now,
            processing_from=now + seconds / 4,
            staged_from=now + seconds / 2,
            finishes_at=None if self.faults.stall else now + seconds,
            error=FAILURE_MESSAGE if staged.failed else None,
            result=staged.result,
            webhook_gave_up=self.faults.take("webhook_retries_exceeded"),
        )
        self._whispers[whisper.hash] = whisper
        self._in_flight = [w for w in self._in_flight if w.finished_at(now) is None]
        self._in_flight.append(whisper)
        self._counters.record_whisper(staged.sha256, len(self._in_flight))
        if not staged.failed:
            self._pages_by_key.setdefault(key, Counter())[options.mode] += staged.requested_pages
        return whisper

    def _new_hash(self, sha256: str) -> str:
        """`<8 hex>|<32 hex>` like the service's `<run_id>|<data_hash>` (section 1.3)."""
        while (whisper_hash := f"{uuid.uuid4().hex[:8]}|{sha256[:32]}") in self._whispers:
            pass
        return whisper_hash

    # -- GET whisper-status, whisper-retrieve, whisper-detail, get-usage-info ------------

    def _status(self, key: str, request: Request) -> Response:
        whisper_hash = request.query_value("whisper_hash") or ""
        with self._lock:
            return self.dialect.status_response(self._whispers.get(whisper_hash), self._clock())

    def _retrieve(self, key: str, request: Request) -> Response:
        try:
            text_only = parse_bool("text_only", request.query_value("text_only") or None)
        except OptionError as exc:
            return _message(400, str(exc))
        with self._lock:
            now = self._clock()
            whisper = self._whispers.get(request.query_value("whisper_hash") or "")
            if whisper is None:
                return self.dialect.unknown_retrieve()
            refusal = self.dialect.retrieve_refusal(whisper, now)
            if refusal is not None:
                return refusal
            # Section 3.4: the text is deleted before the answer is sent.
            result, whisper.result, whisper.retrieved_at = whisper.result or {}, None, now
            self._counters.deliveries += 1
            if self.faults.take("retrieve_error_after_delete"):
                return _server_error()
            if self.faults.take("retrieve_drop_after_delete"):
                return dropped_connection()
        if text_only:
            return Response(200, str(result["result_text"]).encode(), TEXT_TYPE)
        return json_response(200, result)

    def _detail(self, key: str, request: Request) -> Response:
        """Section 4.1; still answers after the text was retrieved."""
        with self._lock:
            now = self._clock()
            whisper = self._whispers.get(request.query_value("whisper_hash") or "")
            if whisper is None:
                return _message(400, RECORD_NOT_FOUND_MESSAGE)
            body = whisper.record(now)
        return json_response(200, body)

    def _usage(self, key: str, request: Request) -> Response:
        """Section 4.3; pages count at submit, per key."""
        with self._lock:
            pages = Counter(self._pages_by_key.get(key, Counter()))
        return json_response(200, usage_info(pages))


def _document(body: bytes, options: WhisperOptions) -> bytes:
    """The bytes to extract. URL mode (section 1.1) is not fetched: the URL is the document."""
    if options.url_in_post:
        return body.strip()
    return body or options.url.encode()


def mount_llmwhisperer(server: EmulatorServer, emulator: LLMWhispererEmulator) -> None:
    """Serve `emulator` under /api/v2/ and its control endpoints under /_emulator/llmwhisperer/."""
    server.mount(PATH_PREFIX, emulator.handle)
    server.mount(CONTROL_PREFIX, emulator.control)


def llmwhisperer_url(server: EmulatorServer) -> str:
    """The base URL an LLMWhisperer client is configured with (no trailing slash)."""
    return f"{server.base_url}{PATH_PREFIX.rstrip('/')}"
