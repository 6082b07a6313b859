"""What a rescan remembers of each folder, so that it lists only the folders that changed.

A file created in, renamed into or deleted from a folder changes the folder's mtime; a file
written in place does not. A cheap rescan stats every folder it remembers and lists only
those whose (mtime, ctime, inode) moved; a full listing (at start, after a lost watch or an inotify
overflow, and every `FULL_LISTING_SECONDS`) catches in-place changes whose events were lost.
Memory is one small entry per folder, never per file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# A listing cannot tell apart a folder changed in the same mtime tick as the stat taken
# before it (coarse timestamps, a share's clock): a folder this recent is listed again.
RACY_NS = 2_000_000_000
FULL_LISTING_SECONDS = 24 * 3600.0  # in-place changes whose events were lost: caught within


@dataclass(frozen=True)
class Mark:
    """A folder as its last listing found it."""

    changed: tuple[int, int, int]  # mtime, ctime (a chmod too), inode
    subfolders: tuple[str, ...]  # absolute paths of the folders it held (walked without listing)


class FolderMarks:
    """The marks of one tree; a scan starts a fresh set, so folders gone are forgotten."""

    def __init__(self) -> None:
        self._marks: dict[str, Mark] = {}
        self._next: dict[str, Mark] = {}  # the marks of the scan under way
        self._doubted: set[str] = set()  # not to be trusted by the scan under way
        self.listed = 0  # folders the scan under way listed
        self.skipped = 0  # folders it found unchanged

    def begin(self, full: bool) -> None:
        if full:
            self._marks = {}
        self._next = {}
        self._doubted = set()
        self.listed = self.skipped = 0

    def unchanged(self, folder: str, info: os.stat_result) -> tuple[str, ...] | None:
        """The subfolders of a folder unchanged since its last listing; None: list it."""
        mark = self._marks.get(folder)
        if mark is None or mark.changed != _changed(info):
            self.listed += 1
            return None
        self._next[folder] = mark
        self.skipped += 1
        return mark.subfolders

    def remember(self, folder: str, info: os.stat_result, subfolders: tuple[str, ...]) -> None:
        """A folder just listed (stat taken before the listing)."""
        if time.time_ns() - info.st_mtime_ns < RACY_NS or folder in self._doubted:
            return
        self._next[folder] = Mark(_changed(info), subfolders)

    def forget(self, folder: str) -> None:
        """List this folder at the next rescan (a file in it could not be read)."""
        self._marks.pop(folder, None)
        self._next.pop(folder, None)
        self._doubted.add(folder)  # its listing may not have ended yet

    def done(self) -> None:
        """The scan went to its end: its marks are the ones the next rescan trusts."""
        self._marks, self._next = self._next, {}

    def __len__(self) -> int:
        return len(self._marks)


def _changed(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
