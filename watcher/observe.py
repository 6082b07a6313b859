"""What watchdog's events mean to a folder watcher (watch.py): which inotify events to ask for,
what each says of a file, and the overflow alarm. observers.py runs the watches."""

from __future__ import annotations

import logging
import os
import time
import weakref
from pathlib import Path
from typing import Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from watcher.arrivals import Arrival


class Watched(Protocol):
    """What an observer reports to: a folder watcher (watch.FolderWatcher)."""

    root: Path
    recursive: bool

    def hint(self, absolute_path: str, arrival: Arrival = Arrival.CHANGED) -> None: ...

    def root_deleted(self) -> None: ...

    def events_lost(self) -> None: ...

    def subfolder_unwatched(self, folder: str, error: OSError) -> None: ...


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watched, native: bool) -> None:
        self._watcher = watcher
        self._root = str(watcher.root)
        self._native = native  # the polling observer's events say only "changed"
        # The folder created last and its subfolders, each with when it was reported (its
        # watch was added before): the events that follow may be watchdog's listing of them.
        self._new_folders: dict[str, int] = {}

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "deleted" and os.fsdecode(event.src_path) == self._root:
            self._watcher.root_deleted()
            return
        if event.event_type in ("deleted", "opened", "closed_no_write"):
            return  # a delete never cancels a job (reliability-notes A3)
        moved = event.event_type == "moved"
        path = os.fsdecode(event.dest_path if moved else event.src_path)
        if moved and event.src_path:  # gone from there: not held for a close any more
            self._watcher.hint(os.fsdecode(event.src_path))
        if path:  # empty: moved out of the tree
            arrival = self._arrival(event, path) if self._native else Arrival.CHANGED
            self._watcher.hint(path, arrival)

    def _arrival(self, event: FileSystemEvent, path: str) -> Arrival:
        """watchdog lists a new folder once it watches it, and reports what it finds there
        as created, right after the folder. A file found so that was last changed before
        its folder was reported may have been closed before the watch existed, and then no
        close comes: it settles, and is then asked whether a writer still has it open. Any
        other event ends that listing."""
        created = event.event_type == "created"
        top = next(iter(self._new_folders), None)
        if created and top is not None and path.startswith(top + os.sep):
            if event.is_directory:
                self._new_folders[path] = time.time_ns()
                return Arrival.CHANGED
            reported_ns = self._new_folders.get(os.path.dirname(path))
            if reported_ns is None:  # not asked for every file: the listing may be huge
                reported_ns = max(self._new_folders.values())
            return Arrival.UNSURE if _changed_before(path, reported_ns) else Arrival.CREATED
        self._new_folders = {path: time.time_ns()} if created and event.is_directory else {}
        return arrival_of(event)


def _changed_before(path: str, moment_ns: int) -> bool:
    try:
        return os.lstat(path).st_ctime_ns <= moment_ns
    except OSError:  # gone already: nothing to hold
        return True


NATIVE_ARRIVALS = {"created": Arrival.CREATED, "closed": Arrival.CLOSED, "moved": Arrival.MOVED_IN}


def arrival_of(event: FileSystemEvent) -> Arrival:
    """What an inotify event says of a file. A created event that watchdog made up for a
    file inside a folder moved in is a whole file; a folder is listed."""
    if event.is_directory:
        return Arrival.CHANGED
    if event.event_type == "created" and event.is_synthetic:
        return Arrival.MOVED_IN
    return NATIVE_ARRIVALS.get(event.event_type, Arrival.CHANGED)


class _OverflowAlarm(logging.Handler):
    """Tells the native watchers that inotify dropped events, and a watcher that the kernel
    refused the watch of a new subfolder of its tree (a limit reached). watchdog has no API
    for either: its inotify backend (7.x) logs a warning and goes on, so the rescan must list
    everything, or find that subfolder's files."""

    MESSAGE = "Inotify queue overflowed"
    UNWATCHED = "Unable to watch %r: %s"  # the subfolder, the OSError

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.watchers: weakref.WeakSet[Watched] = weakref.WeakSet()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == self.UNWATCHED and isinstance(record.args, tuple):
            self._unwatched(*record.args)
        elif record.getMessage().startswith(self.MESSAGE):
            for watcher in list(self.watchers):
                watcher.events_lost()

    def _unwatched(self, path: object, error: object, *_: object) -> None:
        if not isinstance(path, bytes | str) or not isinstance(error, OSError):
            return
        folder = os.fsdecode(path)
        for watcher in list(self.watchers):
            if folder.startswith(os.path.join(watcher.root, "")):
                watcher.subfolder_unwatched(folder, error)


_OVERFLOW = _OverflowAlarm()
logging.getLogger("watchdog.observers").addHandler(_OVERFLOW)


# inotify's events that say a file may be new or complete: created, moved in, closed after
# writing (and the watched folder's own deletion). Left out: each write (a file still being
# written is stat'ed again when its settle time is up), attribute changes, and the opens and
# closes of every read, ours included; the kernel then sends none of them (watchdog builds
# its mask from this list). The polling observer has no close event: it keeps them all.
HINT_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileClosedEvent,
    DirDeletedEvent,
]


def handler_for(watcher: Watched, native: bool) -> FileSystemEventHandler:
    """What turns a folder's watchdog events into its watcher's hints."""
    return _Handler(watcher, native)


def report_overflows(watcher: Watched) -> None:
    """Tell this native watcher when inotify drops events."""
    _OVERFLOW.watchers.add(watcher)
