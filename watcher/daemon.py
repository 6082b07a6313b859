"""The daemon: builds the context and the loops, runs them under the supervisor, serves systemd
until stopped (or, with `once`, until everything found has been done), and stops in order.

Loops: discovery (watch.py), upload workers (submit.py), poll loops (reconcile.py), the
finisher (finish.py), the heartbeat (heartbeat.py), the notice sender (notify.py).

Shutdown order (`stop`, then `join`):
1. the stop event is set and every loop woken: nothing new is claimed;
2. the folder observers stop;
3. uploads, polls and fetches under way get drain_seconds to end (a read-once result must
   still be stored); the reconciler and finisher stop between jobs, whose state is committed
   job by job; an upload cut off stays `submitting` and is sent again on the next start;
4. what the pipelines learnt of their executions' time is written (for the next start), the
   metrics server closes, then every API client (also those a reload replaced);
5. the caller closes the store.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType
from typing import Any

from watcher.config import ConfigError, PipelineConfig, Settings, labelled_pipelines
from watcher.context import Context, Live, Wakes
from watcher.discovery_loop import Discovery
from watcher.doorbell import Doorbell
from watcher.finish import Finisher
from watcher.heartbeat import Heartbeat
from watcher.jobs import IN_FLIGHT, JobState
from watcher.logs import configure as configure_logging
from watcher.logs import get_logger
from watcher.metrics import Metrics, serve_metrics
from watcher.notify import Notifier
from watcher.output import remove_stale_temps
from watcher.probe import Prober
from watcher.reconcile import Reconciler, report_released
from watcher.runtime import Pipeline, build_pipeline
from watcher.setup_check import create_missing
from watcher.store import TRANSIENT_DB_ERRORS, Store, db_error_text
from watcher.store.operator import held_jobs, record_pause
from watcher.submit import Uploader
from watcher.supervisor import Loop, Supervisor
from watcher.systemd import notify, watchdog_interval

log = get_logger()
STALE_TEMP_SECONDS = 300.0
STATUS_SECONDS = 10.0
HUNG_AFTER_LEASES = 3
LEASE_MARGIN_SECONDS = 10.0
DRAIN_CHECK_SECONDS = 0.2  # `once`: how often the main loop looks whether all is done

PipelineFactory = Callable[[PipelineConfig], Pipeline]


def main_tick(watchdog_seconds: float | None) -> float:
    """How often the idle main loop wakes: for each watchdog ping systemd asked for (also
    the check for stuck loops) and at least for each STATUS= line; nothing else needs it."""
    return min(watchdog_seconds or STATUS_SECONDS, STATUS_SECONDS)


@dataclass(frozen=True)
class Progress:
    """Figures for a progress bar: documents finished by this process, and still to do."""

    finished: int
    failed: int
    unfinished: int


@dataclass(frozen=True)
class Outcome:
    """How a run ended; the CLI turns it into an exit code."""

    failure: BaseException | None  # a loop crashed (systemd restarts us)
    paused: dict[str, str]  # `once`: pipelines the API refused when the run ended, and why
    held: int  # `once`: jobs held for an operator with an unknown upload outcome
    failed: int  # documents this run finished with an error file
    unwritable: tuple[str, ...] = ()  # `once`: result folders that refused files at the end
    unlisted: tuple[str, ...] = ()  # `once`: folders that could not be listed, and why


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        pipeline_factory: PipelineFactory = build_pipeline,
    ) -> None:
        owner = settings.daemon.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.temp_tag = hashlib.sha256(owner.encode()).hexdigest()[:8]
        self._pipeline_factory = pipeline_factory
        workers = settings.daemon
        wakes = Wakes.for_workers(workers.upload_workers, workers.poll_workers, store.doubt_raised)
        self.live = Live(self._context(settings, store, owner, Metrics(store), wakes))
        # A claim outlives the longest HTTP call it covers, so a live instance never loses one.
        longest_call = max(
            p.config.api.connect_timeout_seconds + p.config.api.read_timeout_seconds
            for p in self.pipelines.values()
        )
        store.set_lease_seconds(LEASE_MARGIN_SECONDS + longest_call)
        self.stop_event = threading.Event()
        store.stop_waits_on(self.stop_event)  # an outage's retries end when we stop
        self.reload_requested = threading.Event()  # set by SIGHUP; the main loop reloads
        self.doorbell = Doorbell()  # ends the main loop's sleep: stop, reload, signals
        self.rounds: Counter[str] = Counter()  # the main loop's rounds: "rung" or "timer"
        self.started = threading.Event()  # every loop runs
        self.supervisor = Supervisor(self.stop_event, on_failure=self.stop)
        self.discovery = Discovery(self.live)
        self.finisher = Finisher(self.live)
        self.heartbeat = Heartbeat(self.live)
        self.prober = Prober(self.live)
        self.metrics_server: Any = None
        self._retired: list[Pipeline] = []  # replaced by a reload; closed at the end
        self._announce = settings.notify is not None  # pauses and resumes go to the outbox

    def _context(
        self, settings: Settings, store: Store, owner: str, metrics: Metrics, wakes: Wakes
    ) -> Context:
        pipelines = {p.name: self._build(p) for p in settings.pipelines}
        return Context(settings, store, MappingProxyType(pipelines), owner, metrics, wakes)

    def _build(self, config: PipelineConfig) -> Pipeline:
        pipeline = self._pipeline_factory(config)
        pipeline.placement = replace(pipeline.placement, temp_tag=self.temp_tag)
        return pipeline

    @property
    def context(self) -> Context:
        return self.live.current

    @property
    def settings(self) -> Settings:
        return self.live.current.settings

    @property
    def store(self) -> Store:
        return self.live.current.store

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        return dict(self.live.current.pipelines)

    @property
    def metrics(self) -> Metrics:
        return self.live.current.metrics

    @property
    def failure(self) -> BaseException | None:
        return self.supervisor.failure

    # -- the one loop: daemon, `run --once`, demo and tests ------------------------------------

    def run(
        self,
        once: bool = False,
        load_settings: Callable[[], Settings] | None = None,
        watch_events: bool | None = None,
        each_round: Callable[[Daemon], None] | None = None,
    ) -> Outcome:
        """Start, serve until stopped (with `once`: until drained, as arq's burst mode), stop
        in order. `each_round` is called from the main loop (a progress bar)."""
        self.start(watch_events=not once if watch_events is None else watch_events)
        try:
            paused = self.serve(load_settings or (lambda: self.settings), once, each_round)
        finally:
            self.stop()
            self.join()
        if not once:
            return Outcome(self.failure, {}, 0, self.progress().failed)
        held = held_jobs(self.store, list(self.pipelines))
        unwritable, unlisted = self.finisher.trouble.problems(), self.discovery.unlisted()
        return Outcome(
            self.failure, paused, held, self.progress().failed, tuple(unwritable), unlisted
        )

    def start(self, watch_events: bool = True) -> None:
        """Recover what the last run left, then start every loop. Returns once all run."""
        context = self.context
        store = context.store
        store.lock_for_daemon(context.owner)
        report_released(*store.release_leftover_claims(context.owner, context.hold_pipelines()))
        create_missing(labelled_pipelines(context.settings))
        # With SQLite we are the only writer, so every temp file of ours is a crash's leftover.
        self._tidy_folders(temp_age=0.0 if store.sole_writer else STALE_TEMP_SECONDS)
        for name, pipeline in context.pipelines.items():
            record_pause(store, name, "")
            pipeline.on_pause_change = self._pause_recorder(name)
        for name, seconds in store.learnt_execution_seconds().items():
            if name in context.pipelines:  # polls as soon as the last run would have
                context.pipelines[name].start_from(seconds)
        self.discovery.watch_events = watch_events
        self.discovery.begin()
        self.supervisor.start(self._loops(context))
        if context.settings.metrics.enabled:
            listen = context.settings.metrics
            self.metrics_server = serve_metrics(
                self.metrics, listen.host, listen.port, self.health_problems
            )
        self.started.set()
        log.info("started", pipelines=list(self.pipelines), instance=context.owner)

    def _loops(self, context: Context) -> list[Loop]:
        workers = context.settings.daemon
        loops: list[Loop] = [self.discovery]
        loops += [Uploader(self.live, index) for index in range(workers.upload_workers)]
        loops += [Reconciler(self.live, index) for index in range(workers.poll_workers)]
        loops += [self.finisher, self.heartbeat, self.prober]
        if context.settings.notify is not None:
            loops.append(Notifier(self.live, context.settings.notify))
        return loops

    def _tidy_folders(self, temp_age: float) -> None:
        """Remove our temp files that a crash left (with SQLite we are the only writer)."""
        now = time.time()
        for pipeline in self.context.pipelines.values():
            placement = pipeline.placement
            for folder in {placement.watch_dir, placement.output_dir, placement.archive_dir}:
                if folder is not None and folder.exists():
                    remove_stale_temps(folder, temp_age, now, own_tag=self.temp_tag)

    def _keep_estimates(self) -> None:
        """What the pipelines learnt of their executions' time, for the next start."""
        try:
            self.heartbeat.keep_estimates(self.context)
        except TRANSIENT_DB_ERRORS as exc:  # a hint only: the next start learns it again
            log.warning("execution times not kept", error=db_error_text(exc))

    def _pause_recorder(self, name: str) -> Callable[[str], None]:
        return partial(record_pause, self.store, name, announce=self._announce)

    def stop(self) -> None:
        """Ask every loop to stop; idempotent and safe from a signal handler."""
        self.stop_event.set()
        self.context.wakes.wake_all()
        self.doorbell.ring()

    def request_reload(self) -> None:
        """Ask the main loop to reload the config (SIGHUP); safe from a signal handler."""
        self.reload_requested.set()
        self.doorbell.ring()

    def join(self) -> None:
        """Wait for the loops in the documented order, then close the API clients."""
        self.discovery.close()
        cut_off = self.supervisor.join(time.monotonic() + self.settings.daemon.drain_seconds)
        if cut_off:
            log.warning(
                "work still running at the drain limit; it resumes on the next start", loops=cut_off
            )
        self._keep_estimates()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        for pipeline in [*self.pipelines.values(), *self._retired]:
            pipeline.backend.close()
        self.doorbell.close()
        log.info("stopped")

    # -- serving: systemd, watchdog, reload ----------------------------------------------------

    def serve(
        self,
        load_settings: Callable[[], Settings],
        once: bool = False,
        each_round: Callable[[Daemon], None] | None = None,
    ) -> dict[str, str]:
        """The main loop until stopped or, with `once`, drained: READY, STATUS and WATCHDOG
        pings while every loop goes round, and a reload when SIGHUP asked for one. Returns
        the pipelines paused at the end."""
        notify("READY=1", f"STATUS={self.status_line()}")
        tick = DRAIN_CHECK_SECONDS if once else main_tick(watchdog_interval())
        next_tick = time.monotonic() + tick
        next_status = time.monotonic() + STATUS_SECONDS
        while not self.stop_event.is_set():
            # Asleep until the next tick; a stop, a reload or a signal rings the doorbell.
            rung = self.doorbell.wait(next_tick - time.monotonic())
            self.rounds["rung" if rung else "timer"] += 1
            if self.stop_event.is_set():
                break
            if each_round is not None:
                each_round(self)
            if once and self.drained():
                break
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                log.info("reload requested")
                self.reload(load_settings)
            if time.monotonic() < next_tick:
                continue
            next_tick = time.monotonic() + tick
            self._watchdog_ping()
            if time.monotonic() >= next_status and os.environ.get("NOTIFY_SOCKET"):
                next_status = time.monotonic() + STATUS_SECONDS
                self._notify_status()
        notify("STOPPING=1")
        log.info("stop requested")
        return self.paused_pipelines()

    def _watchdog_ping(self) -> None:
        hung = self.hung_loops()
        if hung:  # no ping: systemd's watchdog restarts a hung daemon
            log.error("daemon loops are stuck; withholding the watchdog ping", loops=hung)
        else:
            notify("WATCHDOG=1")

    def drained(self) -> bool:
        """Nothing pending, in flight or unwritten (after the first listing of every folder
        and every pipeline's start check), or a pipeline is paused (refused, or out of reach
        past its grace): its documents would wait for a fix that `once` cannot get."""
        started = (self.discovery.first_pass_done, self.prober.first_round_done)
        if not all(event.is_set() for event in started):
            return False
        if self.paused_pipelines():
            return True
        if self.discovery.pending():
            return False
        unfinished = self.progress().unfinished
        return unfinished == 0 or (self.finisher.trouble.stuck and self._only_results_left())

    def _only_results_left(self) -> bool:
        """Every unfinished job waits for its file to be written (and the finisher could
        write none): `once` would wait for a fix it cannot get."""
        waiting = self.store.unfinished_by_state(list(self.pipelines))
        stored = waiting.get(JobState.RESULT_STORED.value, 0)
        return stored > 0 and stored == sum(waiting.values())

    def health_problems(self) -> list[str]:
        """What /healthz reports: an unreachable database, stuck loops, dead watchers,
        result folders that refuse files."""
        unreachable = self.store.unreachable_reason()
        problems = [f"database: {unreachable}"] if unreachable else []
        problems += self.discovery.problems() + self.finisher.trouble.problems()
        for name, pipeline in self.pipelines.items():
            outage = pipeline.unreachable_past_grace()
            if outage is not None:
                problems.append(f"pipeline {name}: {outage.describe()}")
        return problems + [f"stuck: {name}" for name in self.hung_loops()]

    def hung_loops(self) -> list[str]:
        """Loops that died, or have not moved on for far longer than one HTTP call or one
        file may take (each loop beats per item, not only per round), and dead observers."""
        limit = time.monotonic() - HUNG_AFTER_LEASES * self.store.lease_seconds
        return self.supervisor.hung(limit) + self.discovery.dead_observers()

    def _notify_status(self) -> None:
        try:
            notify(f"STATUS={self.status_line()}")
        except TRANSIENT_DB_ERRORS as exc:  # the loops wait out an outage; so does the status
            notify(f"STATUS=database unreachable: {db_error_text(exc)}")

    def status_line(self) -> str:
        """systemd's STATUS= every 10 s: the work at hand, and this process's finished
        documents (counting the whole history would cost a pass over every row each time)."""
        waiting = self.store.unfinished_by_state()
        in_flight = sum(waiting.get(state.value, 0) for state in IN_FLIGHT)
        outcomes = self.finisher.outcomes.copy()
        done, failed = sum(outcomes.values()) - outcomes["failed"], outcomes["failed"]
        paused = ", ".join(self.paused_pipelines())
        queued = waiting.get(JobState.QUEUED.value, 0)
        figures = (
            f"{queued} queued, {in_flight} in flight, {done} done, {failed} failed since start"
        )
        fell_back = self.discovery.fell_back()  # inotify limits: some folders are polled
        polled = f"; at an inotify limit: {', '.join(fell_back)}" if fell_back else ""
        return figures + (f"; paused: {paused}" if paused else "") + polled

    def paused_pipelines(self) -> dict[str, str]:
        """Pipelines whose documents cannot go on, and why: the API refused the key or the
        deployment, or has been out of reach for longer than its grace."""
        paused = {}
        for name, pipeline in self.pipelines.items():
            outage = pipeline.unreachable_past_grace()
            if outage is not None:
                paused[name] = outage.describe()
            elif pipeline.is_refused():
                paused[name] = pipeline.paused_reason
        return paused

    def progress(self) -> Progress:
        # Outcomes first: a job that finishes between the two reads is then in neither, never
        # in both (a progress bar's total would count it twice).
        outcomes = self.finisher.outcomes.copy()
        unfinished = self.store.unfinished_count(list(self.pipelines))
        return Progress(sum(outcomes.values()), outcomes["failed"], unfinished)

    def resume_pipeline(self, name: str) -> None:
        """Lift a pause (after a reload fixed the key, or by hand): its queued jobs go now."""
        self.pipelines[name].resume()
        self.store.make_queued_due(name)
        self.context.wakes.work.set()

    def reload(self, load_settings: Callable[[], Settings]) -> bool:
        """Re-read the config; pipelines are rebuilt (keys re-read, pauses lifted) without
        touching queued or in-flight jobs. A config that does not load changes nothing.
        Logging follows the new config; upload_workers, poll_workers, [database], [metrics],
        [notify] and instance_id take a restart."""
        notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        old = self.context
        try:
            settings = load_settings()
            fresh = self._context(settings, old.store, old.owner, old.metrics, old.wakes)
            watchers = self.discovery.watchers_for(fresh)
        except Exception as exc:  # whatever the new config breaks, the running one stays
            error = str(exc) if isinstance(exc, ConfigError) else type(exc).__name__
            log.error("reload refused; the running config stays", error=error)
            notify("READY=1")
            return False
        configure_logging(settings.daemon.log_level, settings.daemon.log_format)
        create_missing(labelled_pipelines(settings))
        self.live.swap(fresh)
        self._retired += old.pipelines.values()
        for name, pipeline in fresh.pipelines.items():
            pipeline.on_pause_change = self._pause_recorder(name)
        self.discovery.replace_watchers(watchers)
        self._resume_queued(list(fresh.pipelines))
        removed = sorted(set(old.pipelines) - set(fresh.pipelines))
        log.info("config reloaded", pipelines=sorted(fresh.pipelines), removed=removed)
        notify("READY=1")
        self._notify_status()
        return True

    def _resume_queued(self, names: list[str]) -> None:
        """After a reload: no pipeline is paused, and their queued documents may go now."""
        try:
            for name in names:
                record_pause(self.store, name, "", announce=self._announce)
                self.store.make_queued_due(name)
        except TRANSIENT_DB_ERRORS as exc:  # they go at their next attempt time instead
            log.warning("database unreachable after the reload", error=db_error_text(exc))
        self.context.wakes.work.set()
