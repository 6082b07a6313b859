"""The discovery loop: a `FolderWatcher` (watch.py) per pipeline, all watched through the
daemon's one set of observers (observers.py), their events taken, their folders listed at
start and every rescan_seconds, a slice at a time."""

from __future__ import annotations

import os
import threading
import time
from functools import partial

from watcher.context import Context, ContextLoop, Live
from watcher.filters import as_text
from watcher.logs import get_logger
from watcher.observers import Observers
from watcher.watch import MAX_PATH_BYTES, Discovered, FolderWatcher

log = get_logger()
DISCOVERY_MAX_WAIT_SECONDS = 1.0
# A scan goes on a slice at a time, events handled in between: a file dropped during the
# listing of a big tree is queued within its settle time, and the other loops get the GIL.
SCAN_SLICE_SECONDS = 0.05
SCAN_PAUSE_SECONDS = 0.02


class Discovery(ContextLoop):
    """The discovery loop: every pipeline's watcher takes its events, lists its folder at
    start and every rescan_seconds, and queues the files that settled."""

    name = "discovery"

    def __init__(self, live: Live, watch_events: bool = True) -> None:
        super().__init__(live)
        self.watch_events = watch_events  # False (`run --once`): listings only, no observers
        self.observers = Observers()  # one inotify instance and one poller for all folders
        self.watchers: dict[str, FolderWatcher] = {}  # built by begin()
        self.first_pass_done = threading.Event()  # every folder was listed once
        self._in_pass = threading.Event()
        self._list_all = threading.Event()  # new watchers (a reload): list their folders now

    def watchers_for(self, context: Context) -> dict[str, FolderWatcher]:
        """A watcher per pipeline of `context`, knowing what the job table has seen."""
        return {name: self._watcher(context, name) for name in context.pipelines}

    def begin(self) -> None:
        """At start: a watcher per pipeline, watching its folder."""
        self.watchers = self.watchers_for(self.context)
        self._observe()

    def _observe(self) -> None:
        if not self.watch_events:
            return
        for name, watcher in list(self.watchers.items()):
            config = self.pipelines[name].config
            polling = config.observer == "polling"
            watcher.watch(self.observers, polling, config.polling_interval_seconds)

    def stop_watching(self) -> None:
        for watcher in self.watchers.values():
            watcher.stop_watching()

    def close(self) -> None:
        """Stop watching for good: the observers' threads and inotify instance end."""
        self.stop_watching()
        self.observers.close()

    def replace_watchers(self, watchers: dict[str, FolderWatcher]) -> None:
        """After a reload (the new context is current): watch and list the new folders."""
        self.stop_watching()
        self.watchers = watchers
        self._observe()
        self._list_all.set()
        self.wakes.discovery.set()

    def run(self, stop: threading.Event) -> None:
        rescan_at: dict[str, float] = {}
        while not stop.is_set():
            self.wakes.discovery.clear()
            self._in_pass.set()
            if self._list_all.is_set():
                self._list_all.clear()
                rescan_at.clear()
            self.beat()
            self._pass(rescan_at, time.monotonic())
            if not any(w.scanning for w in self.watchers.values()):
                self.first_pass_done.set()  # every folder was listed to its end
            self._in_pass.clear()
            self.wakes.discovery.wait(self._wait(rescan_at))

    def _pass(self, rescan_at: dict[str, float], now: float) -> None:
        for name, watcher in list(self.watchers.items()):
            root_is_new = watcher.check_root()  # a new folder at watch_dir: list it now
            if root_is_new or watcher.lost_events() or self._due(watcher, rescan_at, now):
                watcher.start_scan(full=root_is_new)
                rescan_at[name] = now + watcher.rescan_seconds
            watcher.step(now)  # events first: a listing of a big tree never holds them back
            watcher.scan_some(now, SCAN_SLICE_SECONDS)

    @staticmethod
    def _due(watcher: FolderWatcher, rescan_at: dict[str, float], now: float) -> bool:
        return now >= rescan_at.get(watcher.name, 0.0) and not watcher.scanning

    def _wait(self, rescan_at: dict[str, float]) -> float:
        if any(w.scanning for w in self.watchers.values()):
            return SCAN_PAUSE_SECONDS
        checks = [w.next_check() for w in self.watchers.values()]
        moments = [c for c in checks if c is not None] + list(rescan_at.values())
        moments.append(time.monotonic() + DISCOVERY_MAX_WAIT_SECONDS)
        wait = min(moments) - time.monotonic()
        return min(DISCOVERY_MAX_WAIT_SECONDS, max(0.01, wait))

    def pending(self) -> bool:
        """A pass is under way, or a file is settling or hinted: more may be queued soon."""
        if self._in_pass.is_set() or any(w.scanning for w in self.watchers.values()):
            return True
        return any(bool(w.tracker) or w.has_hints() for w in self.watchers.values())

    def problems(self) -> list[str]:
        """What /healthz reports of the folders."""
        return [
            f"watch_dir of pipeline {name} cannot be listed: {w.listing_error}"
            for name, w in list(self.watchers.items())
            if w.listing_error
        ]

    def unlisted(self) -> tuple[str, ...]:
        """Folders whose last listing failed, and why: `run --once` exits saying so."""
        found = []
        for watcher in list(self.watchers.values()):
            found += [watcher.listing_error] if watcher.listing_error else []
            found += [f"{as_text(f)}: {error}" for f, error in watcher.unlisted.items()]
        return tuple(found)

    def fell_back(self) -> list[str]:
        """Pipelines polled, or with a subfolder unwatched, because an inotify limit refused
        their folder or the subfolder."""
        watchers = list(self.watchers.items())
        return [name for name, w in watchers if w.fell_back or w.partly_unwatched]

    def dead_observers(self) -> list[str]:
        return [f"observer of {n}" for n, w in list(self.watchers.items()) if not w.watching()]

    def _watcher(self, context: Context, name: str) -> FolderWatcher:
        config = context.pipelines[name].config
        return FolderWatcher(
            name,
            context.pipelines[name].placement.watch_dir,
            recursive=config.recursive,
            file_filter=config.file_filter(),
            settle_seconds=config.settle_seconds,
            known=partial(context.store.known_versions, name),
            enqueue=partial(_enqueue, context, name),
            wake=context.wakes.discovery,
            rescan_seconds=config.rescan_seconds,
            on_progress=self.beat,
            close_wait_seconds=config.close_wait_seconds,
        )


def _enqueue(context: Context, pipeline: str, found: list[Discovered]) -> None:
    """Queue settled files in the job table; a path too long to be a key gets a log line."""
    fits = []
    for one in found:
        if len(os.fsencode(one.relative_path)) <= MAX_PATH_BYTES:
            fits.append(one)
            continue
        log.error(
            "path too long to queue; rename the file or a folder above it",
            pipeline=pipeline,
            path=as_text(one.relative_path)[:200] + "...",
            limit_bytes=MAX_PATH_BYTES,
        )
    rows = [(f.relative_path, f.sha256, f.size, f.mtime_ns) for f in fits]
    restored: list[int] = []
    queued = context.store.enqueue_many(pipeline, rows, restored)
    for one, job_id in zip(fits, queued, strict=True):
        if job_id is not None:
            log.info("queued", pipeline=pipeline, path=as_text(one.relative_path), job_id=job_id)
            context.wakes.work.set()
    if restored:  # earlier versions back at their paths: their stored results go out again
        log.info("earlier versions back; their results are written again", job_ids=restored)
        context.wakes.finished.set()
