"""A document on disk: opened only if it is a regular file, hashed, and watched until it
stands still (pure settle tracking, no filesystem access)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import heapq
import os
import signal
import stat as stat_mode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int


@dataclass
class _Pending:
    stat: FileStat
    still_since: float


@dataclass
class StabilityTracker:
    """Pure: which paths have had the same size and mtime for `settle_seconds`.

    A heap of (still_since, path) orders the pending paths by when they may be stable, so a
    pass over a burst of many files costs its due paths, not every pending one. An entry left
    behind by a later observation or by `forget` is stale: skipped when it comes up."""

    settle_seconds: float
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _by_time: list[tuple[float, str]] = field(default_factory=list)

    def observe(self, path: str, stat: FileStat | None, now: float) -> bool:
        """Record a fresh stat of `path` (None: gone); return True once it is stable."""
        if stat is None:
            self._pending.pop(path, None)
            return False
        entry = self._pending.get(path)
        if entry is None or entry.stat != stat:
            heapq.heappush(self._by_time, (now, path))
            entry = self._pending[path] = _Pending(stat, now)
        if now - entry.still_since >= self.settle_seconds:
            del self._pending[path]
            return True
        return False

    def paths(self) -> list[str]:
        return list(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def __contains__(self, path: str) -> bool:
        return path in self._pending

    def due(self, now: float) -> list[str]:
        """Paths whose settle time has passed: only these need a fresh stat. A change before
        then shows in that stat (or in an event) and starts their settle time again."""
        heap, due = self._by_time, {}
        while heap and now - heap[0][0] >= self.settle_seconds:
            still_since, path = heapq.heappop(heap)
            if self._current(still_since, path):
                due[path] = still_since  # a path observed twice at one moment: once
        for path, still_since in due.items():  # still pending until observe() decides
            heapq.heappush(heap, (still_since, path))
        return list(due)

    def next_check(self) -> float | None:
        """When the earliest pending path could become stable."""
        self._drop_stale()
        if not self._by_time:
            return None
        return self._by_time[0][0] + self.settle_seconds

    def forget(self, path: str) -> None:
        self._pending.pop(path, None)

    def _drop_stale(self) -> None:
        heap = self._by_time
        while heap and not self._current(*heap[0]):
            heapq.heappop(heap)

    def _current(self, still_since: float, path: str) -> bool:
        entry = self._pending.get(path)
        return entry is not None and entry.still_since == still_since


# Why a path in a drop folder is no document (see `regular_file`); the watcher warns about
# the first three once per path.
LINK_OUT = "symlink that leads out of watch_dir"
BROKEN_LINK = "broken symlink"
NOT_REGULAR = "not a regular file"
THROUGH_LINK = "reached through a symlinked folder"
MISSING = "no such file"
WARNED = frozenset({LINK_OUT, BROKEN_LINK, NOT_REGULAR})


def regular_file(root: Path, path: str, real_folder: Callable[[str], bool]) -> FileStat | str:
    """The stat of a regular file inside `root` (resolved), following only symlinks that stay
    inside; else why it is not one. `real_folder(folder)`: not reached through a symlink (the
    polling observer follows them)."""
    try:
        if not real_folder(os.path.dirname(path)):
            return THROUGH_LINK
        info = os.lstat(path)
        if stat_mode.S_ISLNK(info.st_mode):
            target = Path(path).resolve()
            if target != root and not target.is_relative_to(root):
                return LINK_OUT
            info = os.stat(path)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, from Python 3.11's resolve
        return BROKEN_LINK if os.path.islink(path) else MISSING
    if not stat_mode.S_ISREG(info.st_mode):
        return NOT_REGULAR
    return FileStat(info.st_size, info.st_mtime_ns)


class NotARegularFile(OSError):
    """The path was a regular file when listed, but is something else (a FIFO, ...) now."""


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; raise NotARegularFile for anything else.

    O_NONBLOCK: a FIFO swapped in after the stat must not block the open until a writer comes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_for_writing(path: Path) -> bool:
    """Some process has the file open for writing: the kernel refuses a read lease (EAGAIN)
    while one has. False when it cannot tell: not the file's owner and no CAP_LEASE, a file
    system without leases, the file gone."""
    try:  # never through a symlink, and only a regular file (a device's open has effects)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            return False
        # A writer opening the file while we hold the lease makes the kernel signal us:
        # SIGURG, ignored by default, instead of SIGIO, which would end the process.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    finally:
        os.close(fd)  # gives the lease back, if it was granted
    return False


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open_regular(path) as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class TooLarge(OSError):
    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size
