"""The daemon: one stop event, a few supervised loops, and the order they start and stop in.

Loops: discovery (watchers, scans, stability), N upload workers, M poll loops (the
reconciler), the finisher.
If any loop raises, the daemon stops with a non-zero exit so systemd restarts a whole process.

Shutdown order: stop watching and claiming; let in-flight uploads finish within drain_seconds;
the reconciler and finisher stop between jobs (their state is committed job by job); close.
An upload cut off by the drain limit stays `submitting` and is sent again on the next start.
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
from typing import Any

from watcher.config import ConfigError, PipelineConfig, Settings
from watcher.filters import as_text
from watcher.finish import Finisher
from watcher.logs import configure as configure_logging
from watcher.logs import get_logger
from watcher.metrics import Metrics, serve_metrics
from watcher.notify import Notifier
from watcher.output import remove_stale_temps
from watcher.reconcile import Reconciler, report_released
from watcher.runtime import Pipeline, WorkSignal, build_pipeline
from watcher.store import TRANSIENT_DB_ERRORS, Store, db_error_text
from watcher.store.operator import record_pause, summaries
from watcher.submit import Uploader
from watcher.systemd import notify, watchdog_interval
from watcher.watch import Discovered, FolderWatcher

log = get_logger()
STALE_TEMP_SECONDS = 300.0
STATUS_SECONDS = 10.0
HUNG_AFTER_LEASES = 3
LEASE_MARGIN_SECONDS = 10.0
DISCOVERY_MAX_WAIT_SECONDS = 1.0
OUTAGE_FIRST_WAIT_SECONDS = 1.0
OUTAGE_MAX_WAIT_SECONDS = 30.0
ORPHAN_CHECK_SECONDS = 1.0
# Longer relative paths cannot be keys of PostgreSQL's unique index (2704 bytes a row).
MAX_PATH_BYTES = 2048


@dataclass(frozen=True)
class Progress:
    """Figures for a progress bar: documents finished by this process, and still to do."""

    finished: int
    failed: int
    unfinished: int


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        pipeline_factory: Callable[[PipelineConfig], Pipeline] = build_pipeline,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = settings.daemon.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stop_event = threading.Event()
        store.stop_waits_on(self.stop_event)
        self.work = WorkSignal(settings.daemon.upload_workers)  # a job may be ready for upload
        # An execution id was recorded: wakes one idle poll loop.
        self.submitted = WorkSignal(settings.daemon.poll_workers)
        self.finished = threading.Event()  # an outcome was stored
        self.discovery_wake = threading.Event()
        self.temp_tag = hashlib.sha256(self.owner.encode()).hexdigest()[:8]
        self._pipeline_factory = pipeline_factory
        self.pipelines = {p.name: self._build(p) for p in settings.pipelines}
        self.reload_requested = threading.Event()
        self._scan_all = threading.Event()
        self._loops: list[Any] = []  # loop objects with a last_beat, for the watchdog
        self._discovery_beat = time.monotonic()
        self._retired: list[Pipeline] = []  # replaced by a reload; closed at the end
        self.watchers: dict[str, FolderWatcher] = {}
        self._watch_events = True
        self.metrics = Metrics(store)
        self.metrics_server: Any = None
        self.finisher = Finisher(store, self.pipelines, self.owner, self.stop_event, self.finished,
                                 notify=settings.notify)  # fmt: skip
        self.announce = settings.notify is not None  # pauses and resumes go to the outbox
        self.finisher.metrics = self.metrics
        # A claim outlives the longest HTTP call it covers, so a live instance never loses one.
        longest_call = max(
            p.config.api.connect_timeout_seconds + p.config.api.read_timeout_seconds
            for p in self.pipelines.values()
        )
        store.set_lease_seconds(LEASE_MARGIN_SECONDS + longest_call)
        self.failure: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._initial_scan_done = threading.Event()
        self._discovering = threading.Event()  # set while a discovery pass runs

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, watch_events: bool = True) -> None:
        """Recover, scan, and start every loop. Returns once the daemon is up."""
        self.store.lock_for_daemon(self.owner)
        uploads, fetches = self.store.release_leftover_claims(self.owner, self.hold_pipelines())
        report_released(uploads, fetches)
        now = time.time()
        # With SQLite we are the only writer, so every temp file of ours is a crash's leftover.
        temp_age = 0.0 if self.store.sole_writer else STALE_TEMP_SECONDS
        for name, pipeline in self.pipelines.items():
            record_pause(self.store, name, "")
            pipeline.on_pause_change = self._pause_recorder(name)
            placement = pipeline.placement
            for folder in {placement.watch_dir, placement.output_dir, placement.archive_dir}:
                if folder is not None and folder.exists():
                    remove_stale_temps(folder, temp_age, now, own_tag=self.temp_tag)
            self.watchers[name] = self._make_watcher(pipeline)
        self._watch_events = watch_events
        self._start_observers()
        self._spawn("discovery", self._discover)
        for index in range(self.settings.daemon.upload_workers):
            uploader = Uploader(
                self.store, self.pipelines, self.owner, self.stop_event,
                self.work, self.submitted, self.finished,
            )  # fmt: skip
            uploader.metrics = self.metrics
            self._spawn(f"upload-{index}", uploader.run)
            self._loops.append(uploader)
        self._reconcilers = []
        for index in range(self.settings.daemon.poll_workers):
            reconciler = Reconciler(self.store, self.pipelines, self.owner, self.stop_event,
                                    self.submitted, self.finished, self.work)  # fmt: skip
            reconciler.hold = self.hold_pipelines()
            reconciler.metrics = self.metrics
            reconciler.sweeps = index == 0
            self._spawn(f"poll-{index}", reconciler.run)
            self._reconcilers.append(reconciler)
        self._spawn("finish", self.finisher.run)
        self._spawn("heartbeat", self._renew_leases)
        if self.settings.notify is not None:
            notifier = Notifier(self.store, self.settings.notify, self.stop_event, self.metrics)
            self._spawn("notify", notifier.run)
            self._loops.append(notifier)
        self._loops += [*self._reconcilers, self.finisher]
        if self.settings.metrics.enabled:
            listen = self.settings.metrics
            self.metrics_server = serve_metrics(self.metrics, listen.host, listen.port,
                                                self.health_problems)  # fmt: skip
        log.info("started", pipelines=list(self.pipelines), instance=self.owner)

    def _build(self, config: PipelineConfig) -> Pipeline:
        pipeline = self._pipeline_factory(config)
        pipeline.placement = replace(pipeline.placement, temp_tag=self.temp_tag)
        return pipeline

    def _pause_recorder(self, name: str) -> Callable[[str], None]:
        return partial(record_pause, self.store, name, announce=self.announce)

    def hold_pipelines(self) -> list[str]:
        """Pipelines whose interrupted uploads wait for an operator instead of a resubmit."""
        return [n for n, p in self.pipelines.items() if p.config.api.on_unknown_outcome == "hold"]

    def stop(self) -> None:
        """Ask every loop to stop; idempotent and safe from a signal handler."""
        self.stop_event.set()
        self.work.wake_all()
        self.submitted.wake_all()
        for event in (self.finished, self.discovery_wake):
            event.set()

    def join(self) -> None:
        """Wait for the loops in the documented order, then close clients and the store."""
        for watcher in self.watchers.values():
            watcher.stop_watching()
        # Uploads, polls and fetches under way get drain_seconds to finish: a poll or fetch
        # that returns a read-once result must still be able to store it.
        deadline = time.monotonic() + self.settings.daemon.drain_seconds
        for thread in self._threads:
            thread.join(max(1.0, deadline - time.monotonic()))
        cut_off = [t.name for t in self._threads if t.is_alive()]
        if cut_off:
            log.warning("work still running at the drain limit; it resumes on the next start",
                        loops=cut_off)  # fmt: skip
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        for pipeline in [*self.pipelines.values(), *self._retired]:
            pipeline.backend.close()
        log.info("stopped")

    def resume_pipeline(self, name: str) -> None:
        """Lift a pause (after a reload fixed the key, or by hand): its queued jobs go now."""
        self.pipelines[name].resume()
        self.store.make_queued_due(name)
        self.work.set()

    def wait_until_drained(self, poll_seconds: float = 0.2) -> None:
        """Block until nothing is pending, in flight or unwritten (`run --once`), or until a
        pipeline is paused (its documents would wait for a fix that `--once` cannot get)."""
        self._initial_scan_done.wait()
        while not self.stop_event.wait(poll_seconds):
            if self.paused_pipelines():
                return
            if self.progress().unfinished == 0 and not self._discovery_pending():
                return

    def paused_pipelines(self) -> dict[str, str]:
        return {name: p.paused_reason for name, p in self.pipelines.items() if p.is_paused()}

    def progress(self) -> Progress:
        # Outcomes first: a job that finishes between the two reads is then in neither, never
        # in both (a progress bar's total would count it twice).
        outcomes = self.finisher.outcomes.copy()
        unfinished = self.store.unfinished_count(list(self.pipelines))
        return Progress(sum(outcomes.values()), outcomes["failed"], unfinished)

    # -- loops ----------------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._supervised, args=(target,), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _supervised(self, target: Callable[[], None]) -> None:
        """Run a loop; a database outage pauses it (state is committed step by step, so it
        picks up where it was), any other error stops the daemon."""
        delay = OUTAGE_FIRST_WAIT_SECONDS
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                target()
                return
            except TRANSIENT_DB_ERRORS as exc:
                if time.monotonic() - started > OUTAGE_MAX_WAIT_SECONDS:
                    delay = OUTAGE_FIRST_WAIT_SECONDS  # a new outage, not the same one
                log.error("database unreachable; this loop waits and carries on",
                          loop=threading.current_thread().name, error=db_error_text(exc),
                          retry_in_seconds=delay)  # fmt: skip
                self.stop_event.wait(delay)
                delay = min(2 * delay, OUTAGE_MAX_WAIT_SECONDS)
            except BaseException as exc:
                log.exception("a daemon loop crashed; stopping",
                              loop=threading.current_thread().name)  # fmt: skip
                self.failure = exc
                self.stop()
                return

    def _renew_leases(self) -> None:
        """Side loop: keep the claims our loops hold alive at a third of the lease. After a
        write whose answer was lost (the connection dropped at its commit), give back within
        a second any lease of ours that no loop holds: nobody would ever renew or take it."""
        renew_at = 0.0
        while not self.stop_event.is_set():
            if time.monotonic() >= renew_at:
                self.store.renew_leases(self.owner)
                renew_at = time.monotonic() + self.store.lease_seconds / 3
            if self.store.release_orphans(self.owner, hold=self.hold_pipelines()):
                self.work.wake_all()
                self.submitted.wake_all()
                self.finished.set()
            self.stop_event.wait(ORPHAN_CHECK_SECONDS)  # no query unless a claim is in doubt

    def _discover(self) -> None:
        rescan_at: dict[str, float] = {}
        while not self.stop_event.is_set():
            self.discovery_wake.clear()
            self._discovering.set()
            if self._scan_all.is_set():  # new watchers after a reload: list their trees now
                self._scan_all.clear()
                rescan_at.clear()
            now = self._discovery_beat = time.monotonic()
            for name, watcher in list(self.watchers.items()):
                if watcher.check_root():  # a new folder at watch_dir: list it now
                    rescan_at[name] = 0.0
                if now >= rescan_at.get(name, 0.0):
                    watcher.scan(now)
                    rescan_at[name] = now + watcher.rescan_seconds
                watcher.step(now)
            self._initial_scan_done.set()
            self._discovering.clear()
            self.discovery_wake.wait(self._discovery_wait(rescan_at))

    def _discovery_wait(self, rescan_at: dict[str, float]) -> float:
        checks = [w.next_check() for w in self.watchers.values()]
        moments = [c for c in checks if c is not None] + list(rescan_at.values())
        moments.append(time.monotonic() + DISCOVERY_MAX_WAIT_SECONDS)
        wait = min(moments, default=time.monotonic() + 1) - time.monotonic()
        return min(DISCOVERY_MAX_WAIT_SECONDS, max(0.01, wait))

    def _discovery_pending(self) -> bool:
        if self._discovering.is_set():
            return True
        return any(w.tracker.paths() or w.has_hints() for w in self.watchers.values())

    # -- wiring ---------------------------------------------------------------------------------

    def _make_watcher(self, pipeline: Pipeline) -> FolderWatcher:
        config = pipeline.config

        def enqueue(found: list[Discovered]) -> None:
            fits = []
            for one in found:
                if len(os.fsencode(one.relative_path)) <= MAX_PATH_BYTES:
                    fits.append(one)
                    continue
                log.error("path too long to queue; rename the file or a folder above it",
                          pipeline=config.name, path=as_text(one.relative_path)[:200] + "...",
                          limit_bytes=MAX_PATH_BYTES)  # fmt: skip
            rows = [(f.relative_path, f.sha256, f.size, f.mtime_ns) for f in fits]
            for one, job_id in zip(fits, self.store.enqueue_many(config.name, rows), strict=True):
                if job_id is not None:
                    log.info("queued", pipeline=config.name, path=as_text(one.relative_path),
                             job_id=job_id)  # fmt: skip
                    self.work.set()

        watcher = FolderWatcher(
            config.name,
            pipeline.placement.watch_dir,
            recursive=config.recursive,
            file_filter=config.file_filter(),
            settle_seconds=config.settle_seconds,
            known=self.store.known_files(config.name),
            enqueue=enqueue,
            wake=self.discovery_wake,
        )
        watcher.rescan_seconds = config.rescan_seconds
        watcher.on_progress = self._discovery_progress
        return watcher

    def _discovery_progress(self) -> None:
        self._discovery_beat = time.monotonic()

    def _start_observers(self) -> None:
        if not self._watch_events:
            return
        for name, watcher in list(self.watchers.items()):
            config = self.pipelines[name].config
            watcher.watch(config.observer == "polling", config.polling_interval_seconds)

    # -- serving: systemd, watchdog, reload ----------------------------------------------------

    def serve(self, load_settings: Callable[[], Settings]) -> None:
        """The main loop until stopped: READY, STATUS and WATCHDOG pings while every loop goes
        round, and a reload when SIGHUP asked for one."""
        notify("READY=1", f"STATUS={self.status_line()}")
        interval = min(1.0, watchdog_interval() or 1.0)
        next_status = time.monotonic() + STATUS_SECONDS
        while not self.stop_event.wait(interval):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                log.info("reload requested")
                self.reload(load_settings)
            hung = self.hung_loops()
            if hung:  # no ping: systemd's watchdog restarts a hung daemon
                log.error("daemon loops are stuck; withholding the watchdog ping", loops=hung)
            else:
                notify("WATCHDOG=1")
            if time.monotonic() >= next_status and os.environ.get("NOTIFY_SOCKET"):
                next_status = time.monotonic() + STATUS_SECONDS
                self._notify_status()
        notify("STOPPING=1")
        log.info("stop requested")

    def health_problems(self) -> list[str]:
        """What /healthz reports: an unreachable database, stuck loops, dead watchers."""
        unreachable = self.store.unreachable_reason()
        problems = [f"database: {unreachable}"] if unreachable else []
        problems += [f"watch_dir of pipeline {name} cannot be listed: {w.listing_error}"
                     for name, w in list(self.watchers.items()) if w.listing_error]  # fmt: skip
        return problems + [f"stuck: {name}" for name in self.hung_loops()]

    def hung_loops(self) -> list[str]:
        """Loops that died, or have not moved on for far longer than one HTTP call or one
        file may take (each loop beats per item, not only per round)."""
        limit = time.monotonic() - HUNG_AFTER_LEASES * self.store.lease_seconds
        hung = [t.name for t in self._threads if not t.is_alive()]
        hung += [f"observer of {name}" for name, w in list(self.watchers.items())
                 if not w.watching()]  # fmt: skip
        hung += [type(loop).__name__ for loop in self._loops if loop.last_beat < limit]
        if self._discovery_beat < limit:
            hung.append("discovery")
        return hung

    def _notify_status(self) -> None:
        try:
            notify(f"STATUS={self.status_line()}")
        except TRANSIENT_DB_ERRORS as exc:  # the loops wait out an outage; so does the status
            notify(f"STATUS=database unreachable: {db_error_text(exc)}")

    def status_line(self) -> str:
        totals: Counter[str] = Counter()
        for summary in summaries(self.store):
            totals.update(summary.counts)
            totals["in flight"] += summary.in_flight
        paused = ", ".join(self.paused_pipelines())
        figures = ", ".join(f"{totals[k]} {k}" for k in ("queued", "in flight", "done", "failed"))
        return figures + (f"; paused: {paused}" if paused else "")

    def reload(self, load_settings: Callable[[], Settings]) -> bool:
        """Re-read the config; pipelines are rebuilt (keys re-read, pauses lifted) without
        touching queued or in-flight jobs. A config that does not load changes nothing.
        Logging follows the new config; upload_workers, poll_workers, [database], [metrics]
        and instance_id take a restart."""
        notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        try:
            settings = load_settings()
            fresh = {p.name: self._build(p) for p in settings.pipelines}
            watchers = {name: self._make_watcher(p) for name, p in fresh.items()}
        except Exception as exc:  # whatever the new config breaks, the running one stays
            error = str(exc) if isinstance(exc, ConfigError) else type(exc).__name__
            log.error("reload refused; the running config stays", error=error)
            notify("READY=1")
            return False
        configure_logging(settings.daemon.log_level, settings.daemon.log_format)
        for watcher in self.watchers.values():
            watcher.stop_watching()
        old = dict(self.pipelines)
        self._retired += old.values()
        self.pipelines.update(fresh)
        for name in set(old) - set(fresh):
            del self.pipelines[name]
        self.settings = settings
        self.watchers = watchers
        self._start_observers()
        self._scan_all.set()
        self.discovery_wake.set()
        for name, pipeline in fresh.items():
            pipeline.on_pause_change = self._pause_recorder(name)
        for reconciler in self._reconcilers:
            reconciler.hold = self.hold_pipelines()
        self._resume_queued(list(fresh))
        log.info("config reloaded", pipelines=sorted(fresh), removed=sorted(set(old) - set(fresh)))
        notify("READY=1")
        self._notify_status()
        return True

    def _resume_queued(self, names: list[str]) -> None:
        """After a reload: no pipeline is paused, and their queued documents may go now."""
        try:
            for name in names:
                record_pause(self.store, name, "", announce=self.announce)
                self.store.make_queued_due(name)
        except TRANSIENT_DB_ERRORS as exc:  # they go at their next attempt time instead
            log.warning("database unreachable after the reload", error=db_error_text(exc))
        self.work.set()
