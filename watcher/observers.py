"""One inotify instance and one poller for every watched folder of the daemon.

watchdog's observers run a thread per scheduled watch (its emitter), and each inotify observer
opens a kernel instance of its own: one observer per pipeline took about 568 threads and every
inotify instance a user may have at 150 pipelines. Here every native folder gets a watchdog
`InotifyWatchGroup` on one shared `InotifyFD` (one kernel instance, with its reader and
dispatcher threads), and one thread of ours hands each group's events through watchdog's own
emitter code to that folder's handler; every polling folder gets a watchdog `PollingEmitter`,
all run in turn by one poller thread. watchdog's tested pieces still do the inotify work
(recursive watches, moves paired, watches rebuilt after an overflow); only who runs them
changed, so no inotify code of our own. Each group sees only its own tree, and folders that
nest share the kernel's watch (watchdog keeps a callback per group on it): an event reaches
every pipeline whose folder holds its path, and no other.
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import EventQueue, ObservedWatch
from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyFD
from watchdog.observers.inotify_move_event_grouper import (
    GroupedInotifyEvent,
    InotifyMoveEventGrouper,
)
from watchdog.observers.polling import PollingEmitter
from watchdog.utils.delayed_queue import DelayedQueue

from watcher.observe import HINT_EVENTS, Watched, handler_for, report_overflows

# The kernel's limits, by the errno watchdog raises when one is reached.
LIMITS = {errno.ENOSPC: "max_user_watches", errno.EMFILE: "max_user_instances"}


def limit_reached(exc: OSError) -> str | None:
    """Which inotify limit an error says was reached, with its value: None if another error."""
    name = LIMITS.get(exc.errno or 0)
    if name is None:
        return None
    try:
        value = Path("/proc/sys/fs/inotify", name).read_text().strip()
    except OSError:
        value = "?"
    return f"fs.inotify.{name} = {value}"


class _ReadyQueue(DelayedQueue[GroupedInotifyEvent]):
    """watchdog's queue of a group's events, read without blocking (one thread reads them all)
    and ringing the reader at each event."""

    def __init__(self, delay: float, wake: threading.Event) -> None:
        super().__init__(delay)
        self._wake = wake

    def put(self, element: GroupedInotifyEvent, *, delay: bool = False) -> None:
        super().put(element, delay=delay)
        self._wake.set()

    def take(self) -> tuple[GroupedInotifyEvent | None, float | None]:
        """The next event due; else the seconds until a move held for its pair is due
        (None: nothing queued). As `get`: a held move holds back what came after it."""
        with self._lock:
            if not self._queue:
                return None, None
            head, inserted, delayed = self._queue[0]
            left = inserted + self.delay - time.monotonic() if delayed else 0.0
            if left > 0:
                return None, left
            self._queue.popleft()
            return head, None


class _Grouper(InotifyMoveEventGrouper):
    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self.ready = _ReadyQueue(self.delay, wake)
        self._queue = self.ready


@dataclass
class _Group(InotifyWatchGroup):
    """watchdog's watches for one folder, its events queued for the shared reader."""

    wake: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.grouper = _Grouper(self.wake)
        self._move_event_grouper = self.grouper  # before the watches exist (super() adds them)
        super().__post_init__()


class _NativeEmitter(InotifyFullEmitter):
    """watchdog's emitter for one folder, never started as a thread: `add` adds its watches,
    `drain` (the shared reader) turns its events into watchdog events for its handler."""

    def __init__(
        self, handler: FileSystemEventHandler, watch: ObservedWatch, shared: InotifyFD
    ) -> None:
        super().__init__(EventQueue(), watch, event_filter=HINT_EVENTS, inotify_fd=shared)
        self._handler = handler

    def add(self, wake: threading.Event) -> None:
        path = os.fsencode(self.watch.path)
        self._inotify = _Group(
            self._inotify_fd,
            path,
            event_mask=self.get_event_mask_from_filter(),
            is_recursive=self.watch.is_recursive,
            follow_symlink=self.watch.follow_symlink,
            wake=wake,
        )

    def queue_event(self, event: FileSystemEvent) -> None:
        if any(isinstance(event, kind) for kind in HINT_EVENTS):
            self._handler.dispatch(event)

    def drain(self) -> float | None:
        """Hand on the events due; the seconds until a held move is due (None: none held)."""
        while True:
            with self._lock:
                group = self._inotify
                if not isinstance(group, _Group):  # stopped
                    return None
                event, left = group.grouper.ready.take()
                if event is None:
                    return left
                self.build_and_queue_event(event)


class _Thread:
    """One named daemon thread running `loop` until `stop`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure(self, loop: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
            self._thread.start()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


class _NativeHub:
    """The one inotify instance and the thread that reads every folder's events from it."""

    def __init__(self) -> None:
        self._shared: InotifyFD | None = None  # opened with the first native folder
        self._emitters: list[_NativeEmitter] = []
        self._runner = _Thread("inotify-events")

    def add(self, handler: FileSystemEventHandler, watch: ObservedWatch) -> _NativeEmitter:
        """Watch a folder; OSError when the kernel refuses (see `limit_reached`)."""
        with self._runner.lock:
            if self._shared is None:
                shared = InotifyFD()
                shared.start()
                self._shared = shared
            emitter = _NativeEmitter(handler, watch, self._shared)
            emitter.add(self._runner.wake)
            self._emitters = [*self._emitters, emitter]
            self._runner.ensure(self._run)
        return emitter

    def remove(self, emitter: _NativeEmitter) -> None:
        emitter.stop()  # its watches go (the kernel's, when no other folder shares them)
        with self._runner.lock:
            self._emitters = [e for e in self._emitters if e is not emitter]

    def alive(self) -> bool:
        return self._runner.alive() and (self._shared is None or self._shared.is_alive())

    def _run(self) -> None:
        """Asleep until an event comes (or a stop): idle, it costs nothing."""
        wait: float | None = None
        while not self._runner.stopping.is_set():
            self._runner.wake.wait(wait)
            self._runner.wake.clear()
            held = [emitter.drain() for emitter in self._emitters]
            wait = min([left for left in held if left is not None], default=None)

    def close(self) -> None:
        for emitter in self._emitters:
            self.remove(emitter)
        self._runner.stop()
        if self._shared is not None:
            self._shared.stop()
            self._shared.join()


class _PolledEmitter(PollingEmitter):
    """watchdog's polling emitter for one folder, never started as a thread: the poller
    runs its `queue_events` when it is due."""

    def __init__(self, handler: FileSystemEventHandler, watch: ObservedWatch, interval: float):
        super().__init__(EventQueue(), watch, timeout=interval)
        self._handler = handler
        self.due = time.monotonic() + interval

    def queue_event(self, event: FileSystemEvent) -> None:
        self._handler.dispatch(event)

    def poll(self, now: float) -> float:
        """Compare with the last listing if due; when it is due next (never once its folder
        is gone: the watcher watches the new one with an emitter of its own)."""
        if not self.should_keep_running():
            return math.inf
        if now >= self.due:
            self.queue_events(0)  # watchdog waits `timeout` first: the poller has done so
            self.due = time.monotonic() + self.timeout
        return self.due


class _Poller:
    """One thread polling every polling folder in turn, each at its own interval."""

    def __init__(self) -> None:
        self._emitters: list[_PolledEmitter] = []
        self._runner = _Thread("polling")

    def add(
        self, handler: FileSystemEventHandler, watch: ObservedWatch, interval: float
    ) -> _PolledEmitter:
        emitter = _PolledEmitter(handler, watch, interval)
        emitter.on_thread_start()  # the first listing, to compare the next ones with
        with self._runner.lock:
            self._emitters = [*self._emitters, emitter]
            self._runner.ensure(self._run)
        self._runner.wake.set()
        return emitter

    def remove(self, emitter: _PolledEmitter) -> None:
        emitter.stop()
        with self._runner.lock:
            self._emitters = [e for e in self._emitters if e is not emitter]

    def alive(self) -> bool:
        return self._runner.alive()

    def _run(self) -> None:
        while not self._runner.stopping.is_set():
            now = time.monotonic()
            due = min([emitter.poll(now) for emitter in self._emitters], default=math.inf)
            # A new folder or a stop rings the wake: no need to look before the next due.
            self._runner.wake.wait(None if due == math.inf else max(0.0, due - time.monotonic()))
            self._runner.wake.clear()

    def close(self) -> None:
        for emitter in self._emitters:
            self.remove(emitter)
        self._runner.stop()


@dataclass(frozen=True)
class Watch:
    """One folder's watch: its watchdog emitter, and how its owner ends it and runs."""

    emitter: _NativeEmitter | _PolledEmitter
    stop: Callable[[], None]  # ends this watch (the kernel's watches go with the last user)
    thread_alive: Callable[[], bool]  # the thread that runs it (and every other folder's)

    def following(self) -> bool:
        """It still follows its folder: watchdog ends a watch whose folder was deleted."""
        return self.emitter.should_keep_running() and self.thread_alive()


class Observers:
    """The daemon's watching: one inotify instance and one thread reading it for every native
    folder, one poller thread for every polling folder; threads and instances come with the
    first folder of each kind, never more."""

    def __init__(self) -> None:
        self._native = _NativeHub()
        self._poller = _Poller()

    def watch(self, watched: Watched, polling: bool, polling_interval: float) -> Watch:
        """Start watching a folder for its watcher; OSError when inotify refuses it."""
        watch = ObservedWatch(str(watched.root), recursive=watched.recursive)
        handler = handler_for(watched, native=not polling)
        if polling:
            polled = self._poller.add(handler, watch, polling_interval)
            return Watch(polled, partial(self._poller.remove, polled), self._poller.alive)
        emitter = self._native.add(handler, watch)
        report_overflows(watched)
        return Watch(emitter, partial(self._native.remove, emitter), self._native.alive)

    def close(self) -> None:
        self._native.close()
        self._poller.close()


class SoloWatch:
    """A watch with observers of its own (tests and tools watching one folder)."""

    def __init__(self, watched: Watched, polling: bool, polling_interval: float) -> None:
        self.observers = Observers()
        self.watch = self.observers.watch(watched, polling, polling_interval)

    def stop(self) -> None:
        self.observers.close()

    def join(self) -> None:
        """Nothing to wait for: `stop` has joined the threads."""


def start_observer(watched: Watched, polling: bool, polling_interval: float) -> SoloWatch:
    """Watch one folder with observers of its own; the caller stops it."""
    return SoloWatch(watched, polling, polling_interval)
