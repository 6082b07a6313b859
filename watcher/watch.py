"""Finding documents: filesystem events as hints, directory listings as the truth.

The discovery loop (discovery_loop.py) runs one `FolderWatcher` per pipeline. watchdog
events, a scan at start and a periodic rescan all feed the same `Arrivals`; a path is hashed
and queued only once its size and mtime have stood still for `settle_seconds`, and, with the
native observer, once a file created in place was closed by its writer (reliability-notes A2,
A5, A7; arrivals.py).

A watch follows a folder, not a path: when `watch_dir` is deleted, moved away or replaced (a
share unmounted and mounted again, a tool that recreates the folder), the old watch sees
nothing of the new folder. Each discovery pass checks the root's identity (device and inode),
and its delete event and a dead watch thread say the same; the new folder is watched and
listed as soon as it exists.
"""

from __future__ import annotations

import logging
import os
import stat as stat_mode
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from watcher.arrivals import Arrival, Arrivals
from watcher.files import (
    NOT_REGULAR,
    WARNED,
    FileStat,
    NotARegularFile,
    open_for_writing,
    regular_file,
    sha256_of,
)
from watcher.filters import FileFilter, PassedOver, as_text
from watcher.folders import FULL_LISTING_SECONDS, FolderMarks
from watcher.logs import get_logger
from watcher.observers import Observers, Watch, limit_reached
from watcher.store import KnownFile

log = get_logger()
# Longer relative paths cannot be keys of PostgreSQL's unique index (2704 bytes a row).
MAX_PATH_BYTES = 2048
# watchdog's inotify backend warns when a watch for a just-created subfolder is registered
# twice in a race (new folder events vs. its recursive walk); the watch works either way.
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)


@dataclass(frozen=True)
class Discovered:
    """A stable file, hashed: what the job table is given."""

    relative_path: str
    sha256: str
    size: int
    mtime_ns: int


Enqueue = Callable[[list[Discovered]], None]
# What the job table knows of some paths: asked a batch at a time, never all held in memory.
Known = Callable[[Sequence[str]], Mapping[str, KnownFile]]
ENQUEUE_BATCH = 200  # files queued in one transaction (a burst of drops is a few of them)
LOOKUP_BATCH = 500  # listed files whose known versions one query asks for


class FolderWatcher:
    """Watches one pipeline's folder and hands stable new or changed files to `enqueue`."""

    def __init__(
        self,
        name: str,
        root: Path,
        *,
        recursive: bool,
        file_filter: FileFilter,
        settle_seconds: float,
        known: Known,
        enqueue: Enqueue,
        wake: threading.Event,
        rescan_seconds: float = 300.0,
        on_progress: Callable[[], None] = lambda: None,
        close_wait_seconds: float = 600.0,
    ) -> None:
        self.name = name
        self.root = root.resolve()
        self.recursive = recursive
        self.filter = file_filter
        self.tracker = Arrivals(settle_seconds, close_wait_seconds)
        self._known = known
        self._enqueue = enqueue
        self._scan: Iterator[str] | None = None  # the listing under way, if any
        self._scan_began = (0.0, 0.0)  # its start: monotonic and process CPU time
        self._scan_entries = 0  # entries it has listed
        self._ready: list[Discovered] = []  # settled and hashed, not yet handed to enqueue
        self._wake = wake
        self._hints: dict[str, Arrival] = {}
        self._hints_lock = threading.Lock()
        self.rescan_seconds = rescan_seconds
        self._warned: set[str] = set()  # paths already reported, so a rescan does not repeat
        self._passed: set[str] = set()  # paths passed over and said so (at debug level)
        self.listing_error: str | None = None  # why the root could not be listed, for /healthz
        self.unlisted: dict[str, str] = {}  # subfolders the last listing could not read, why
        self._real_folders: dict[str, bool] = {}  # see _real_folder
        # Paths are joined and cut as text in the listing's loops: pathlib costs several
        # microseconds a path, which a tree of a million files pays at every rescan.
        self._root_text = str(self.root)
        self._prefix = os.path.join(self._root_text, "")
        self.marks = FolderMarks()  # what the last listing saw of each folder
        self._full_began: float | None = None  # monotonic start of the last full listing
        self._events_lost = threading.Event()  # an inotify overflow: list everything again
        self.on_progress = on_progress  # discovery's heartbeat: a long scan is not a hang
        self.log = log.bind(pipeline=name)
        self._debug = self.log.is_enabled_for(logging.DEBUG)
        self._observer: Watch | None = None
        self._observers = Observers()  # replaced by the daemon's shared ones in watch()
        self._observing = (False, 1.0)  # polling?, polling interval
        self.fell_back: str | None = None  # the inotify limit that made this folder poll
        self.partly_unwatched: str | None = None  # the limit that refused a new subfolder
        self._root_id = _identity(self.root)  # (device, inode) of the watched root
        self._root_deleted = threading.Event()  # the watch saw its own root deleted
        self._stopped = False  # stopped for good (a reload, the end): never watched again
        self._watch_lock = threading.Lock()  # a stop and a re-watch never cross

    # -- watching (events as hints) -------------------------------------------------------------

    def watch(self, observers: Observers, polling: bool, polling_interval: float) -> None:
        """Watch the folder with the daemon's observers; native watching falls back to
        polling when the kernel's inotify limits refuse it."""
        self._observers = observers
        self._observing = (polling, polling_interval)
        self._root_id = _identity(self.root)
        try:
            self._observer = observers.watch(self, polling, polling_interval)
        except OSError as exc:
            limit = None if polling else limit_reached(exc)
            if limit is None:
                raise
            self._fall_back(limit, polling_interval)

    def _fall_back(self, limit: str, polling_interval: float) -> None:
        if self.fell_back != limit:  # once: a re-watch of a replaced folder says it no more
            self.log.error(
                "inotify limit reached; polling this folder instead (raise the limit and "
                "restart or reload to watch it natively)",
                limit=limit,
                folder=as_text(str(self.root)),
            )
        self.fell_back = limit
        self._observing = (True, polling_interval)
        self._observer = self._observers.watch(self, True, polling_interval)

    def stop_watching(self) -> None:
        with self._watch_lock:
            self._stopped = True
            if self._observer is not None:
                self._observer.stop()

    def watching(self) -> bool:
        """The observer thread runs (its watch may have ended with its folder: see
        `check_root`)."""
        return self._observer is None or self._observer.thread_alive()

    def root_deleted(self) -> None:
        """From the watch's thread: the root itself was deleted."""
        self._root_deleted.set()
        self._wake.set()

    def check_root(self) -> bool:
        """Notice a root that is gone or was replaced; watch the new folder once it exists.
        True when the root is watched anew (the caller lists it at once)."""
        if self._stopped:  # retired by a reload while discovery went over it
            return False
        identity = _identity(self.root)
        if identity is None:
            if self._root_id is not None:
                self.log.error(
                    "watch_dir is gone; it is watched again once it is back",
                    folder=as_text(str(self.root)),
                )
            self._root_id = None
            self.listing_error = f"{as_text(str(self.root))}: the folder is missing"
            return False
        if identity == self._root_id and self._watch_alive():
            return False
        self.log.warning(
            "watch_dir was replaced or is back; watching the folder now there",
            folder=as_text(str(self.root)),
        )
        self._root_id = identity
        with self._watch_lock:
            if self._stopped:
                return False
            if self._observer is not None and not self._watch_again():
                return False
        self.tracker.events_lost()  # what was held was in the old folder
        self.listing_error = None
        return True

    def _watch_again(self) -> bool:
        if self._observer is not None:
            self._observer.stop()
        self._root_deleted.clear()
        try:
            self.watch(self._observers, *self._observing)
        except OSError as exc:  # gone again already: the next pass tries once more
            self._root_id = None
            self.listing_error = f"{as_text(str(self.root))}: {exc.strerror or exc}"
            return False
        return True

    def _watch_alive(self) -> bool:
        """The watch still follows the root: its delete was not seen, its thread runs."""
        if self._observer is None:  # events were not asked for: listings only
            return True
        if self._root_deleted.is_set():
            return False
        return self._observer.following()

    # -- events (watchdog's thread) -------------------------------------------------------------

    def hint(self, absolute_path: str, arrival: Arrival = Arrival.CHANGED) -> None:
        """Something may have changed at this path (a file, or a folder to list); the last
        event that says more than that counts."""
        with self._hints_lock:
            if arrival is not Arrival.CHANGED or absolute_path not in self._hints:
                self._hints[absolute_path] = arrival
        self._wake.set()

    def events_lost(self) -> None:
        """From the watch's thread: inotify dropped events; the next rescan lists it all.
        Said once per loss: watchdog reports one to every folder on the instance, in turn."""
        if not self._events_lost.is_set():
            self.log.warning("inotify dropped events; listing the whole folder again")
        self._events_lost.set()
        self._wake.set()

    def subfolder_unwatched(self, folder: str, error: OSError) -> None:
        """From the watch's thread: the kernel refused a new subfolder's watch."""
        limit = limit_reached(error) or str(error)
        if self.partly_unwatched is None:
            self.log.error(
                "inotify limit reached; a new subfolder is not watched, its files are found "
                "by the rescans (raise the limit, then reload or restart)",
                limit=limit,
                folder=as_text(folder),
                rescan_seconds=self.rescan_seconds,
            )
        self.partly_unwatched = limit

    def lost_events(self) -> bool:
        return self._events_lost.is_set()

    def has_hints(self) -> bool:
        with self._hints_lock:
            return bool(self._hints)

    def _take_hints(self) -> dict[str, Arrival]:
        with self._hints_lock:
            hints, self._hints = self._hints, {}
        return hints

    # -- discovery (the discovery thread) -------------------------------------------------------

    def scan(self, now: float) -> None:
        """List the whole tree at once; every file not known as it is goes to the tracker."""
        self.start_scan(full=True)
        self.scan_some(now)

    def start_scan(self, full: bool = False) -> None:
        """Begin listing the tree (again); `scan_some` goes on with it. Only the folders
        that changed are listed, unless `full` or a full listing is due (see folders.py)."""
        full = full or self._full_listing_due()
        if full:
            if self._events_lost.is_set():
                self.tracker.events_lost()  # a writer's close may be among them
            self._events_lost.clear()
            self._full_began = time.monotonic()
        self.marks.begin(full)
        self._real_folders.clear()
        self._scan = self._walk(self._root_text, self.marks)
        self._scan_began = (time.monotonic(), time.process_time())
        self._scan_entries = 0

    def _full_listing_due(self) -> bool:
        began = self._full_began
        if began is None or self._events_lost.is_set():
            return True
        return time.monotonic() - began >= FULL_LISTING_SECONDS

    @property
    def scanning(self) -> bool:
        return self._scan is not None

    def scan_some(self, now: float, budget_seconds: float | None = None) -> None:
        """Go on with the listing for about `budget_seconds` (None: to its end), a batch of
        files at a time."""
        if self._scan is None:
            return
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        batch: list[str] = []
        for relative in self._scan:
            self._scan_entries += 1
            batch.append(relative)
            if len(batch) < LOOKUP_BATCH:
                continue
            self._consider_many(batch, now)
            batch = []
            if deadline is not None and time.monotonic() >= deadline:
                break
        else:
            self._scan = None
        self._consider_many(batch, now)
        self._flush()
        if self._scan is None:
            self._listed()

    def _listed(self) -> None:
        began, cpu = self._scan_began
        seconds = round(time.monotonic() - began, 3)
        cpu_seconds = round(time.process_time() - cpu, 3)  # the whole process's, meanwhile
        self.marks.done()
        self.log.debug(
            "folder listed",
            entries=self._scan_entries,
            folders_listed=self.marks.listed,
            folders_unchanged=self.marks.skipped,
            seconds=seconds,
            cpu_seconds=cpu_seconds,
        )

    def step(self, now: float) -> None:
        """Take pending hints, then queue whatever has become stable."""
        self._real_folders.clear()
        hinted: list[str] = []
        for absolute, arrival in self._take_hints().items():
            relative = self._relative(absolute)
            if relative is None:
                continue
            if arrival is not Arrival.CHANGED and self.filter.takes(relative):
                self.tracker.arrived(relative, arrival, now)
            hinted += self._hinted(relative)
        for start in range(0, len(hinted), LOOKUP_BATCH):
            self._consider_many(hinted[start : start + LOOKUP_BATCH], now)
        self.tracker.events_done()
        unheld = [r for r in self.tracker.stop_waiting(now) if not self._still_open(r, now)]
        for relative in unheld:
            self.log.info("no close came; taken once it stands still", path=as_text(relative))
        for relative in [*self.tracker.due(now), *unheld]:
            stat = self._stat(relative)
            if self.tracker.observe(relative, stat, now):
                self._settled(relative, stat, now)
        self._flush()

    def next_check(self) -> float | None:
        return self.tracker.next_check()

    def _hinted(self, relative: str) -> list[str]:
        """The files a hint is about: itself, or those of a new folder."""
        target = self.root / relative
        if not self.recursive:
            # A folder here is never listed, only warned about.
            return [relative] if "/" not in relative else []
        if target.is_dir() and not target.is_symlink():
            return [] if self.filter.excludes_dir(relative) else list(self._walk(str(target)))
        return [relative]

    def _consider_many(self, relatives: list[str], now: float) -> None:
        """Files not known as they are (size and mtime) go to the tracker; the table is asked
        about them all in one query, and not about those already settling."""
        candidates = [
            (relative, stat) for relative in relatives if (stat := self._candidate(relative))
        ]
        asked = [relative for relative, _ in candidates if relative not in self.tracker]
        known = self._known(asked) if asked else {}
        for relative, stat in candidates:
            seen = known.get(relative)
            if seen is not None and seen.stat_key == (stat.size, stat.mtime_ns):
                continue
            if self.tracker.observe(relative, stat, now):
                self._settled(relative, stat, now)

    def _candidate(self, relative: str) -> FileStat | None:
        """The stat of a file this pipeline takes; None for anything else."""
        self.on_progress()
        passed_over = self.filter.passed_over(relative)
        if passed_over is not None:
            self._passed_over(relative, passed_over)
            return None
        stat = self._stat(relative)
        if stat is None:
            self.tracker.forget(relative)
        elif len(os.fsencode(relative)) > MAX_PATH_BYTES:
            # Never queued (see _enqueue): not hashed at every rescan either.
            self._warn_once(
                relative, "path too long to queue; rename the file or a folder above it"
            )
            return None
        return stat

    def _settled(self, relative: str, stat: FileStat | None, now: float) -> None:
        """Hash a file that stood still; it is queued with the others of this pass."""
        if stat is None:
            return
        if self.tracker.take_unsure(relative) and self._still_open(relative, now):
            return
        try:
            sha256, size = sha256_of(self.root / relative)
        except NotARegularFile:  # swapped for a FIFO or a folder since the stat
            self._warn_once(relative, f"{NOT_REGULAR}; ignored")
            return
        except OSError as exc:
            self.log.warning("cannot read file", path=as_text(relative), error=exc.strerror)
            self.marks.forget(os.path.dirname(self._prefix + relative))  # tried at each rescan
            return
        if self._stat(relative) != stat or size != stat.size:
            self.hint(str(self.root / relative))  # written to while we read: wait again
            return
        self._ready.append(Discovered(relative, sha256, size, stat.mtime_ns))
        if len(self._ready) >= ENQUEUE_BATCH:
            self._flush()

    def _still_open(self, relative: str, now: float) -> bool:
        """A writer has the file open, as far as the kernel lets us ask (files.py): it is
        held for that writer's close."""
        if not open_for_writing(self.root / relative):
            return False
        self.tracker.arrived(relative, Arrival.CREATED, now)
        # Said at each close_wait_seconds that it stays open: a writer that never lets go
        # (an indexer, a stuck copy) would otherwise hold the document back without a word.
        self.log.warning(
            "a writer still has the file open; waiting for it to close it", path=as_text(relative)
        )
        return True

    def _flush(self) -> None:
        ready, self._ready = self._ready, []
        if not ready:
            return
        self._enqueue(ready)  # known to the table from now on

    def _stat(self, relative: str) -> FileStat | None:
        """Stat of a regular file inside the root, following only symlinks that stay inside."""
        found = regular_file(self.root, self._prefix + relative, self._real_folder)
        if isinstance(found, FileStat):
            return found
        if found in WARNED:
            self._warn_once(relative, f"{found}; ignored")
        return None

    def _real_folder(self, folder: str) -> bool:
        """The folder is itself, not reached through a symlink; remembered for one pass."""
        real = self._real_folders.get(folder)
        if real is None:
            real = self._real_folders[folder] = os.path.realpath(folder) == folder
        return real

    def _passed_over(self, relative: str, passed_over: PassedOver) -> None:
        """A debug line per path the pipeline's include or exclude leaves alone, so a wrong
        pattern does not look like a dead daemon (`check-config --explain` tells the same)."""
        if not passed_over.by_pattern or not self._debug or relative in self._passed:
            return
        self._passed.add(relative)  # only while debugging: a set that grows with the tree
        self.log.debug("file passed over", path=as_text(relative), reason=passed_over.reason)

    def _warn_once(self, relative: str, message: str) -> None:
        if relative not in self._warned:
            self._warned.add(relative)
            self.log.warning(message, path=as_text(relative))

    def _inside(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def _relative(self, absolute: str) -> str | None:
        path = Path(absolute)
        if not self._inside(path) or path == self.root:
            return None
        return path.relative_to(self.root).as_posix()

    def _walk(self, folder: str, marks: FolderMarks | None = None) -> Iterator[str]:
        """The files under `folder`; with `marks`, only those of the folders that changed
        since their last listing (the others are stat'ed, not listed)."""
        info = _folder_stat(folder)
        subfolders = None if marks is None or info is None else marks.unchanged(folder, info)
        if subfolders is None:
            subfolders = yield from self._list(folder)
            if marks is not None and info is not None and subfolders is not None:
                marks.remember(folder, info, subfolders)
        for subfolder in subfolders or ():
            yield from self._walk(subfolder, marks)

    def _list(self, folder: str) -> Generator[str, None, tuple[str, ...] | None]:
        """Yield a folder's files; return the subfolders to walk (None: it cannot be listed)."""
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            self.log.warning("cannot list folder", folder=as_text(folder), error=exc.strerror)
            if folder == self._root_text:
                self.listing_error = f"{as_text(folder)}: {exc.strerror or exc}"
            elif not isinstance(exc, FileNotFoundError | NotADirectoryError):  # not just gone
                self.unlisted[folder] = exc.strerror or str(exc)
            return None
        if folder == self._root_text:
            self.listing_error = None
        self.unlisted.pop(folder, None)
        subfolders: list[tuple[int, str]] = []
        for entry in entries:
            relative = entry.path.removeprefix(self._prefix)  # listed under the root
            if not entry.is_dir(follow_symlinks=False):
                yield relative
            elif self.recursive:
                if not self.filter.excludes_dir(relative):
                    subfolders.append((_changed_ns(entry), entry.path))
            elif Path(entry.name).suffix:
                yield relative  # not walked: a folder named like a document gets a warning
        # The most recently changed first: a document dropped while the daemon was down is
        # found before the folders of old history (a new file changes its folder's mtime).
        subfolders.sort(reverse=True)
        return tuple(path for _, path in subfolders)


def _changed_ns(entry: os.DirEntry[str]) -> int:
    """When a listed folder last changed (0 if it is gone)."""
    try:
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return 0


def _folder_stat(folder: str) -> os.stat_result | None:
    try:
        return os.stat(folder)
    except OSError:  # gone: listing it says why
        return None


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder; None if it is missing or not a folder."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat_mode.S_ISDIR(info.st_mode) else None
