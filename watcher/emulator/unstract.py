"""The emulated Unstract API deployment: Execution API (POST) and Status API (GET).

Follows ../shared/api/unstract-api-behaviour.md; section numbers below refer to it.
`UnstractEmulator.handle` maps a `Request` to an `Answer` (a `Pending` while a slow fault or
a synchronous wait holds it); no sockets, no sleeping here. Executions progress by
wall-clock time, so nothing runs in the background.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .bodies import BodyError, parse_body
from .executions import TERMINAL, Execution, Status, status_response
from .faults import Faults
from .forms import (
    ExecutionForm,
    parse_execution_id,
    parse_status_flags,
    validate_execution_form,
)
from .responses import (
    Answer,
    FieldError,
    Pending,
    Request,
    Response,
    bad_gateway_page,
    dropped_connection,
    json_response,
    method_not_allowed,
    not_found_page,
    server_error,
    std_error,
    unavailable_page,
    validation_error,
)
from .results import FileResult, RunContext, build_results, shape_results, stage_files
from .stats import EmulatorStats, StatsCounters

PATH_PREFIX = "/deployment/api/"
_ROUTE = re.compile(r"^/deployment/api/(?P<org>[\w-]+)/(?P<api>[\w-]+)/?$")
_WAIT_STEP_SECONDS = 0.02
STAGING_ERROR = "Error while staging files for execution: emulated staging failure"
ORG_LIMIT_MESSAGE = (
    "Organization has reached the maximum concurrent API requests limit ({used}/{limit}). "
    "Please try again later."
)
GLOBAL_LIMIT_MESSAGE = (
    "Our system is currently experiencing high load. Please try again in a few moments."
)


@dataclass
class Deployment:
    """One API deployment; its fields may be changed while the emulator runs."""

    org: str
    api: str
    keys: list[str] = field(default_factory=list)
    execution_seconds: float = 0.5
    active: bool = True
    stall: bool = False  # new executions stay EXECUTING forever
    fail_glob: str | None = None  # file names matching it fail
    workflow_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def path(self) -> str:
        return f"{PATH_PREFIX}{self.org}/{self.api}/"


@dataclass(frozen=True)
class GlobalKey:
    """An org-level key, for all deployments of the org or only those in `apis`."""

    org: str
    key: str
    apis: frozenset[str] | None = None


def file_rounds(files: int, batches: int) -> int:
    """How many file times an execution of `files` takes (section 12): min(batches, files)
    batches of ceil(files / batches) files each, run in parallel."""
    if files <= 1:
        return 1
    return math.ceil(files / min(batches, files))


def _key_matches(key: str, candidates: Collection[str]) -> bool:
    """Keys are UUIDs; a non-UUID key never matches (section 2)."""
    wanted = _as_uuid(key)
    return wanted is not None and any(_as_uuid(candidate) == wanted for candidate in candidates)


@lru_cache(maxsize=1024)  # the same few keys on every request; parsing one costs 5 us
def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


class UnstractEmulator:
    """In-memory Unstract API deployments; every method is thread-safe."""

    def __init__(
        self,
        org_limit: int = 20,
        result_ttl_seconds: float = 10800,
        global_limit: int | None = None,
        max_parallel_file_batches: int = 4,
    ) -> None:
        self.org_limit = org_limit
        # The workers' MAX_PARALLEL_FILE_BATCHES (section 12): an execution's files run in
        # this many parallel batches, each batch's files one after another.
        self.max_parallel_file_batches = max_parallel_file_batches
        self.result_ttl_seconds = result_ttl_seconds
        self.global_limit = global_limit
        self.faults = Faults()
        self._lock = threading.Lock()
        self._deployments: dict[tuple[str, str], Deployment] = {}
        self._global_keys: list[GlobalKey] = []
        self._executions: dict[str, Execution] = {}
        self._running: dict[str, list[Execution]] = {}  # per org; pruned lazily
        self._counters = StatsCounters()

    # -- configuration -------------------------------------------------------------------

    def add_deployment(self, deployment: Deployment) -> Deployment:
        """Serve `deployment` (replacing one with the same org and api); returns it."""
        with self._lock:
            self._deployments[(deployment.org, deployment.api)] = deployment
        return deployment

    def deployment(self, org: str, api: str) -> Deployment:
        """The live Deployment object, to change its settings at runtime (KeyError if none)."""
        with self._lock:
            return self._deployments[(org, api)]

    def add_global_key(self, org: str, key: str, apis: Collection[str] | None = None) -> None:
        """Accept `key` for every deployment of `org`, or only for those named in `apis`."""
        with self._lock:
            self._global_keys.append(GlobalKey(org, key, None if apis is None else frozenset(apis)))

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault knobs by name; raises ValueError for unknown names or bad values."""
        with self._lock:
            self.faults.update(changes)
            return Faults(**self.faults.as_json())

    def stop_execution(self, execution_id: str, processed: bool = True) -> bool:
        """Force a running execution to STOPPED; False if unknown or already terminal.
        `processed=False`: stopped before any file was processed, so no file has an item."""
        now = time.time()
        with self._lock:
            execution = self._executions.get(execution_id)
            if execution is None or execution.status(now) in TERMINAL:
                return False
            execution.forced, execution.forced_at = Status.STOPPED, now
            if not processed:
                execution.results = None
            return True

    def execution_status(self, execution_id: str) -> str | None:
        """Peek at an execution's status without the Status API's side effects."""
        with self._lock:
            execution = self._executions.get(execution_id)
            return None if execution is None else execution.status(time.time()).value

    def stats(self) -> EmulatorStats:
        """A frozen snapshot of the counters."""
        now = time.time()
        with self._lock:
            completed_at = {
                execution_id: since
                for execution_id, execution in self._executions.items()
                if (since := execution.terminal_since(now)) is not None
            }
            return self._counters.snapshot(completed_at)

    # -- request handling ----------------------------------------------------------------

    def handle(self, request: Request) -> Answer:
        """Answer one request to a `/deployment/api/...` URL."""
        match = _ROUTE.match(request.path)
        if match is None:
            return not_found_page()
        # Django answers HEAD with the GET view (and its side effects).
        method = "GET" if request.method == "HEAD" else request.method
        if method not in ("GET", "POST"):
            return method_not_allowed(request.method)
        if (slow := self.faults.slow_seconds) > 0:
            return Pending(slow, lambda: self._answer(match, method, request))
        return self._answer(match, method, request)

    def _answer(self, match: re.Match[str], method: str, request: Request) -> Answer:
        injected = self._inject_faults(method, request)
        if injected is not None:
            return injected
        deployment = self._authenticate(match["org"], match["api"], request.header("authorization"))
        if isinstance(deployment, Response):
            return deployment
        if method == "POST":
            return self._execute(deployment, request)
        return self._status(request)

    def _inject_faults(self, method: str, request: Request) -> Response | None:
        with self._lock:
            self._count_request(method, request)
            if self.faults.take("proxy_html"):
                return bad_gateway_page()
            if self.faults.gateway_down:
                return unavailable_page()
            if self.faults.unauthorized:
                return std_error(401, "Unauthorized")
            kind = "get_error" if method == "GET" else "post_error_before_create"
            if self.faults.take(kind):
                return server_error()
        return None

    def _count_request(self, method: str, request: Request) -> None:
        if method == "POST":
            self._counters.posts += 1
            return
        self._counters.gets += 1
        parsed = parse_execution_id(request.query_value("execution_id"))
        if not isinstance(parsed, FieldError):
            self._counters.gets_by_execution[parsed[1]] += 1

    def _authenticate(self, org: str, api: str, header: str | None) -> Deployment | Response:
        """Section 2: header 403, then deployment 404, then key 401, in that order."""
        if header is None or not header.startswith("Bearer "):
            return std_error(403, "Missing api key")
        key = header.split(" ")[1]  # as the server does: "Bearer  x" has an empty key
        if not key:
            return std_error(403, "Missing api key")
        with self._lock:
            deployment = self._deployments.get((org, api))
            if deployment is None:
                return std_error(404, "API not found")
            if not deployment.active:
                return std_error(404, "API not found or Inactive")
            global_keys = [
                k.key
                for k in self._global_keys
                if k.org == org and (k.apis is None or api in k.apis)
            ]
            if not _key_matches(key, [*deployment.keys, *global_keys]):
                return std_error(401, "Unauthorized")
            return deployment

    # -- Execution API -------------------------------------------------------------------

    def _execute(self, deployment: Deployment, request: Request) -> Answer:
        try:
            data = parse_body(request.header("content-type"), request.body)
        except BodyError as exc:
            return exc.response
        form = validate_execution_form(data)
        if isinstance(form, list):
            return validation_error(form)
        execution_id = str(uuid.uuid4())
        staged = stage_files(form.files, deployment.fail_glob)
        started_at = time.time()
        run = RunContext(
            deployment.org,
            deployment.workflow_id,
            execution_id,
            form.tags,
            started_at,
            deployment.execution_seconds,
        )
        results = build_results(staged, run)
        hashes = [file.sha256 for file in staged]
        with self._lock:
            refused = self._refuse_over_limit(deployment.org, started_at)
            if refused is not None:
                return refused
            own = [f.seconds for f in staged if f.seconds is not None]
            execution = self._create(deployment, run, results, hashes, max(own, default=None))
            if self.faults.take("post_error_after_create"):
                return server_error()
            if self.faults.take("post_drop_after_create"):
                return dropped_connection()
        if form.timeout > 0 and execution.error is None:
            return self._wait(execution, form, time.monotonic() + form.timeout)
        return self._execution_response(execution, form)

    def _running_count(self, org: str, now: float) -> int:
        running = [e for e in self._running.get(org, []) if e.status(now) not in TERMINAL]
        self._running[org] = running
        return len(running)

    def _refuse_over_limit(self, org: str, now: float) -> Response | None:
        """Section 6: concurrent executions per org, then globally; no Retry-After."""
        used = self._running_count(org, now)
        detail = None
        if used >= self.org_limit:
            detail = ORG_LIMIT_MESSAGE.format(used=used, limit=self.org_limit)
        elif self.global_limit is not None:
            total = sum(self._running_count(other, now) for other in list(self._running))
            detail = GLOBAL_LIMIT_MESSAGE if total >= self.global_limit else None
        if detail is None:
            return None
        self._counters.rate_limited += 1
        return std_error(429, detail)

    def _create(
        self,
        deployment: Deployment,
        run: RunContext,
        results: list[FileResult],
        hashes: list[str],
        own_seconds: float | None = None,
    ) -> Execution:
        """`own_seconds`: the run time its documents ask for (SECONDS_MARKER)."""
        now = run.started_at
        seconds = own_seconds
        if seconds is None:
            rounds = file_rounds(len(results), self.max_parallel_file_batches)
            seconds = deployment.execution_seconds * rounds
        all_failed = bool(results) and all(item["status"] == "Failed" for item in results)
        execution = Execution(
            id=run.execution_id,
            org=deployment.org,
            status_api=f"{deployment.path}?execution_id={run.execution_id}",
            created_at=now,
            pending_until=now + seconds / 4,
            finishes_at=None if deployment.stall else now + seconds,
            outcome=Status.ERROR if all_failed else Status.COMPLETED,
            results=results,
        )
        if self.faults.take("post_staging_error"):
            # Section 4: staging failed; the row is ERROR at once and has no status_api.
            execution.status_api, execution.results, execution.error = None, None, STAGING_ERROR
            execution.forced, execution.forced_at = Status.ERROR, now
        self._executions[execution.id] = execution
        self._running.setdefault(deployment.org, []).append(execution)
        running = self._running_count(deployment.org, now)
        self._counters.record_execution(deployment.org, hashes, running)
        return execution

    def _wait(self, execution: Execution, form: ExecutionForm, deadline: float) -> Answer:
        """The synchronous wait of section 4, in small steps instead of 2 s ones."""
        with self._lock:
            finished = execution.status(time.time()) in TERMINAL
        remaining = deadline - time.monotonic()
        if finished or remaining <= 0:
            return self._execution_response(execution, form)
        step = min(_WAIT_STEP_SECONDS, remaining)
        return Pending(step, lambda: self._wait(execution, form, deadline))

    def _execution_response(self, execution: Execution, form: ExecutionForm) -> Response:
        with self._lock:
            status = execution.status(time.time())
            results = None
            if form.timeout > 0 and execution.error is None and status in TERMINAL:
                # Section 4: a synchronous call that saw the end consumes the results.
                _, status, results = execution.consume(time.time(), self.result_ttl_seconds)
        message = {
            "execution_id": execution.id,
            "execution_status": status.value,
            "status_api": execution.status_api,
            "error": execution.error,
            "result": shape_results(results, form.shaping) if results else None,
        }
        failed = status is Status.ERROR or bool(execution.error)
        return json_response(422 if failed else 200, {"message": message})

    # -- Status API ----------------------------------------------------------------------

    def _status(self, request: Request) -> Response:
        parsed = parse_execution_id(request.query_value("execution_id"))
        shaping, flag_errors = parse_status_flags(request.query)
        if isinstance(parsed, FieldError):
            return validation_error([parsed, *flag_errors])
        shown, execution_id = parsed
        with self._lock:
            # Looked up globally: no ownership check, like the real server (section 8).
            execution = self._executions.get(execution_id)
            if execution is None:
                return std_error(404, f"Execution with ID '{shown}' does not exist.")
            if flag_errors:
                return validation_error(flag_errors)
            read = execution.consume(time.time(), self.result_ttl_seconds)
            if read[0]:
                self._counters.already_acknowledged += 1
        return status_response(*read, shaping)
