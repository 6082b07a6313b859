"""A document on disk: opened only if it is a regular file, hashed, and watched until it
stands still (pure settle tracking, no filesystem access)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mode
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
    """Pure: which paths have had the same size and mtime for `settle_seconds`."""

    settle_seconds: float
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def observe(self, path: str, stat: FileStat | None, now: float) -> bool:
        """Record a fresh stat of `path` (None: gone); return True once it is stable."""
        if stat is None:
            self._pending.pop(path, None)
            return False
        entry = self._pending.get(path)
        if entry is None or entry.stat != stat:
            entry = self._pending[path] = _Pending(stat, now)
        if now - entry.still_since >= self.settle_seconds:
            del self._pending[path]
            return True
        return False

    def paths(self) -> list[str]:
        return list(self._pending)

    def __contains__(self, path: str) -> bool:
        return path in self._pending

    def due(self, now: float) -> list[str]:
        """Paths whose settle time has passed: only these need a fresh stat. A change before
        then shows in that stat (or in an event) and starts their settle time again."""
        settle = self.settle_seconds
        return [path for path, p in self._pending.items() if now - p.still_since >= settle]

    def next_check(self) -> float | None:
        """When the earliest pending path could become stable."""
        if not self._pending:
            return None
        return min(p.still_since for p in self._pending.values()) + self.settle_seconds

    def forget(self, path: str) -> None:
        self._pending.pop(path, None)


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


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (never blocks on a FIFO)."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise TooLarge(size)
        # One byte past the size shows a file that grew (its digest then differs); a read
        # of `limit` would allocate that much for every small document.
        return handle.read(size + 1)
