"""What the loops of a running daemon share: one frozen `Context`, built at start and again by
each reload, and the wake-up signals that outlive reloads.

A loop never keeps a pipeline or a setting across rounds: it reads `live.current` when it
needs one, so a reload is one swap of the context and nothing is patched in place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from watcher.config import Settings
from watcher.jobs import Decision, Wake
from watcher.logs import get_logger
from watcher.metrics import Metrics
from watcher.runtime import Pipeline
from watcher.store import Store
from watcher.supervisor import Loop

log = get_logger()


class WorkSignal:
    """Wakes one idle worker per piece of new work (an Event would wake them all, and all but
    one would find nothing to claim). Pending wake-ups are capped at the workers."""

    def __init__(self, workers: int = 1) -> None:
        self._cond = threading.Condition()
        self._pending = 0
        self._cap = max(1, workers)

    def set(self) -> None:
        with self._cond:
            self._pending = min(self._cap, self._pending + 1)
            self._cond.notify(1)

    def wake_all(self) -> None:
        with self._cond:
            self._pending = self._cap
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout)
            if self._pending:
                self._pending -= 1
                return True
            return False


class LastLook:
    """What an idle loop's last look at the table found (when its next work comes due), and
    the database's change mark read just before it: while the mark stays the same nobody has
    committed since, so the answer holds until that work comes due. `now` is passed in."""

    def __init__(self) -> None:
        self._seen: tuple[int, tuple[str, ...]] | None = None  # (mark, pipelines asked about)
        self._due_at: float | None = None  # None: nothing was waiting

    def holds(self, mark: int | None, pipelines: tuple[str, ...], now: float) -> bool:
        if mark is None or self._seen != (mark, pipelines):
            return False
        return self._due_at is None or now < self._due_at

    def found(
        self, mark: int | None, pipelines: tuple[str, ...], now: float, due_in: float | None
    ) -> None:
        self._seen = None if mark is None else (mark, pipelines)
        self._due_at = None if due_in is None else now + due_in

    def due_in(self, now: float) -> float | None:
        return None if self._due_at is None else self._due_at - now


@dataclass(frozen=True)
class Wakes:
    """Signals that end an idle loop's wait early. Each loop also wakes on stop (`wake_all`)."""

    work: WorkSignal  # a job may be ready for upload: one idle upload worker looks
    submitted: WorkSignal  # an execution id was recorded: one idle poll loop looks
    finished: threading.Event = field(default_factory=threading.Event)  # an outcome was stored
    discovery: threading.Event = field(default_factory=threading.Event)  # a watch event came
    # A lease may be in doubt (the store sets it: a write's answer was lost): the heartbeat looks.
    heartbeat: threading.Event = field(default_factory=threading.Event)
    probe: threading.Event = field(default_factory=threading.Event)  # an API went out of reach

    @classmethod
    def for_workers(
        cls, upload_workers: int, poll_workers: int, doubt: threading.Event | None = None
    ) -> Wakes:
        """`doubt`: the store's signal that a lease is in doubt (`Store.doubt_raised`)."""
        heartbeat = doubt if doubt is not None else threading.Event()
        return cls(WorkSignal(upload_workers), WorkSignal(poll_workers), heartbeat=heartbeat)

    def give(self, wakes: Iterable[Wake]) -> None:
        """Wake one idle loop of each kind that has work now."""
        signals: dict[Wake, WorkSignal | threading.Event] = {
            Wake.UPLOADS: self.work,
            Wake.POLLS: self.submitted,
            Wake.FINISHER: self.finished,
            Wake.PROBE: self.probe,
        }
        for wake in wakes:
            signals[wake].set()

    def wake_all(self) -> None:
        self.work.wake_all()
        self.submitted.wake_all()
        self.finished.set()
        self.discovery.set()
        self.heartbeat.set()
        self.probe.set()


@dataclass(frozen=True)
class Context:
    """Everything a loop works with, as of the last start or reload."""

    settings: Settings
    store: Store
    pipelines: Mapping[str, Pipeline]
    owner: str  # this instance's name on the claims it takes
    metrics: Metrics
    wakes: Wakes

    def reachable(self) -> list[str]:
        """The pipelines whose API is not out of reach: their executions may be polled."""
        return [name for name, p in self.pipelines.items() if p.outage is None]

    def hold_pipelines(self) -> list[str]:
        """Pipelines whose interrupted uploads wait for an operator instead of a resubmit."""
        return [n for n, p in self.pipelines.items() if p.config.api.on_unknown_outcome == "hold"]


class Live:
    """The current context. Reading `current` is one attribute load, so no lock is needed."""

    def __init__(self, context: Context) -> None:
        self.current = context

    def swap(self, context: Context) -> Context:
        """Make `context` current; return the one it replaces."""
        old, self.current = self.current, context
        return old


class ContextLoop(Loop):
    """A loop that works with the current context, read afresh at each use."""

    def __init__(self, live: Live) -> None:
        super().__init__()
        self.live = live

    @property
    def context(self) -> Context:
        return self.live.current

    @property
    def store(self) -> Store:
        return self.live.current.store

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        return self.live.current.pipelines

    @property
    def owner(self) -> str:
        return self.live.current.owner

    @property
    def metrics(self) -> Metrics:
        return self.live.current.metrics

    @property
    def wakes(self) -> Wakes:
        return self.live.current.wakes

    def due_in(
        self, look: LastLook, ask: Callable[[list[str]], float | None], pipelines: list[str]
    ) -> float | None:
        """`ask(pipelines)`: seconds until the next work comes due, None if none waits. On
        SQLite it is asked only when someone committed since the last look (an operator's
        `retry` too), or when what that look found has come due: idle, a wake costs no query."""
        mark, now, asked = self.store.change_mark(), time.monotonic(), tuple(pipelines)
        if not look.holds(mark, asked, now):  # the mark first: a commit during `ask` counts
            look.found(mark, asked, now, ask(pipelines))
        return look.due_in(now)

    def carry_out(self, decision: Decision, pipeline: Pipeline) -> None:
        """What a recorded decision asks for besides its row: the pipeline's change, its log
        lines and counters, and the loops it gives work to."""
        if decision.pipeline_change is not None:
            pipeline.apply(
                decision.pipeline_change,
                decision.pause_reason,
                decision.delay_seconds,
                self.store.clock(),
            )
        if decision.error_kind is not None:
            self.metrics.errors.labels(pipeline.name, decision.error_kind).inc()
        if decision.retry_stage is not None:
            self.metrics.retries.labels(pipeline.name, decision.retry_stage).inc()
        for line in decision.logs:
            getattr(log, line.level)(line.event, **line.fields)
        self.wakes.give(decision.wakes)
