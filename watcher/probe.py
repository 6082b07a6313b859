"""The prober: asks each pipeline's API the harmless question of `check-config --online` (no
execution is created, no credits are spent) at start, so that a refused key or a wrong URL
pauses the pipeline before any document arrives; and, while an API is out of reach, asks it
again at growing intervals until it answers (outage.py).

It alone writes an outage where `status`, the metrics and the notices see it: recorded at
once, announced (an error line, a notice) only once it lasted `outage_grace_seconds`, so a
proxy's restart is no news; cleared when the API answers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from watcher.backend import CheckKind, CheckOutcome
from watcher.context import ContextLoop, Live
from watcher.logs import get_logger
from watcher.runtime import Pipeline
from watcher.store.operator import announce_pause, record_pause

log = get_logger()
IDLE_SECONDS = 10.0  # well under the hung-loop limit; an outage wakes the loop at once
CHECKERS = 8  # checks at once: one API's connect timeout does not hold up the others


class Prober(ContextLoop):
    def __init__(self, live: Live) -> None:
        super().__init__(live)
        self.name = "probe"
        self.first_round_done = threading.Event()  # every pipeline's start check answered
        self._checked: dict[str, Pipeline] = {}  # the pipeline (as built) its start check saw
        self._recorded: dict[str, bool] = {}  # outages in the table: name -> announced

    def run(self, stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(CHECKERS, thread_name_prefix="probe")
        try:
            while not stop.is_set():
                self.beat()
                self.wakes.probe.clear()  # before looking: a wake from now on is not lost
                self._probe_due(pool)
                self._report()
                self.first_round_done.set()
                self.wakes.probe.wait(self._idle_wait())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _probe_due(self, pool: ThreadPoolExecutor) -> None:
        now = time.monotonic()
        due = [p for p in list(self.pipelines.values()) if self._due(p, now)]
        for pipeline, outcome in zip(due, pool.map(_check, due), strict=True):
            self._learn(pipeline, outcome)

    def _due(self, pipeline: Pipeline, now: float) -> bool:
        if self._checked.get(pipeline.name) is not pipeline:  # new: started, or reloaded
            return True
        outage = pipeline.outage
        return outage is not None and outage.next_probe_at <= now

    def _learn(self, pipeline: Pipeline, outcome: CheckOutcome) -> None:
        self._checked[pipeline.name] = pipeline
        if outcome.kind is CheckKind.UNREACHABLE:
            if not pipeline.begin_outage(outcome.found, self.store.clock()):
                pipeline.probed_unreachable(outcome.found)
            return
        if pipeline.outage is not None:  # any answer: it is back
            self._back(pipeline)
        if outcome.kind is CheckKind.REFUSED:
            pipeline.pause(outcome.found, pipeline.policy.paused_recheck_seconds)
        elif outcome.kind is CheckKind.UNEXPECTED:
            log.warning(
                "the API answered a harmless check unexpectedly; uploads go on",
                pipeline=pipeline.name,
                found=outcome.found,
            )

    def _back(self, pipeline: Pipeline) -> None:
        """The API answers again: its queued documents go now (what the outage put back is
        due already; a deliberate backoff, after a 429 say, keeps its time), its executions
        are polled."""
        pipeline.end_outage(self.store.clock())
        self.wakes.work.set()
        self.wakes.submitted.set()

    def _report(self) -> None:
        for pipeline in list(self.pipelines.values()):
            self._report_one(pipeline)

    def _report_one(self, pipeline: Pipeline) -> None:
        name, outage, now = pipeline.name, pipeline.outage, time.monotonic()
        self.metrics.unreachable.labels(name).set(0.0 if outage is None else outage.age(now))
        self.metrics.in_flight_limit.labels(name).set(pipeline.in_flight_limit())
        recorded = self._recorded.get(name)
        notify = self.context.settings.notify is not None
        if outage is None:
            if recorded is not None:
                record_pause(self.store, name, pipeline.paused_reason, announce=recorded and notify)
                del self._recorded[name]
            return
        if recorded is None:
            record_pause(self.store, name, outage.describe())
            self._recorded[name] = False
        if not self._recorded[name] and pipeline.unreachable_past_grace(now):
            log.error(
                "API unreachable for longer than outage_grace_seconds; documents wait",
                pipeline=name,
                reason=outage.reason,
                unreachable_seconds=round(outage.age(now)),
            )
            if notify:
                announce_pause(self.store, name, outage.describe())
            self._recorded[name] = True

    def _idle_wait(self) -> float:
        """Until the next probe is due, or a while: an outage's start wakes us (Wake.PROBE)."""
        now = time.monotonic()
        waits = [IDLE_SECONDS]
        for pipeline in list(self.pipelines.values()):
            outage = pipeline.outage
            if outage is not None:
                waits.append(outage.next_probe_at - now)
                grace = outage.since + pipeline.config.api.outage_grace_seconds - now
                if grace > 0:
                    waits.append(grace)
        return max(0.01, min(waits))


def _check(pipeline: Pipeline) -> CheckOutcome:
    return pipeline.backend.check()
