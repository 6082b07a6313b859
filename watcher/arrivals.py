"""When a file may be taken, from how it was found (pure: no clock, no filesystem).

A listing (the scan at start, a rescan, the polling observer) sees only a size and an mtime:
the file is taken once they stood still for `settle_seconds`. The native observer says more
(inotify(7)): a file created in place is still being written until its writer closes it
(IN_CLOSE_WRITE), however long the writer pauses, so it is held until then and settles from
the close; a file renamed or moved in arrives whole and is taken at once.

A close can fail to come: the queue overflowed, the file is a hard link or a symlink, or a
writer keeps it open for ever. A file held `close_wait_seconds` without a close is handed back
(`stop_waiting`) to be asked whether a writer still has it open (files.open_for_writing) and
otherwise settles; after an overflow every held file settles. A file that was in a new folder
before its watch existed (UNSURE: see observe.py) settles and is then asked the same.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from watcher.files import FileStat, StabilityTracker


class Arrival(enum.Enum):
    """What an event or a listing says of a path."""

    CHANGED = "changed"  # listed, or an event that says no more: settle_seconds
    CREATED = "created"  # a writer created it in place: held until it closes it
    CLOSED = "closed"  # a writer closed it after writing: settles from now
    MOVED_IN = "moved in"  # renamed or moved in whole: taken at first sight
    UNSURE = "unsure"  # there before its new folder's watch: settles, then is it open?


@dataclass
class Arrivals:
    """A `StabilityTracker` that holds files still open for writing and takes moved-in ones
    at once. Its interface is the tracker's, plus `arrived` for what events say."""

    settle_seconds: float
    close_wait_seconds: float
    tracker: StabilityTracker = field(init=False)
    _open: dict[str, float] = field(default_factory=dict)  # held: path -> when it was created
    _whole: set[str] = field(default_factory=set)  # moved in, not yet stat'ed
    _unsure: set[str] = field(default_factory=set)  # to ask whether still open, once settled

    def __post_init__(self) -> None:
        self.tracker = StabilityTracker(self.settle_seconds)

    def arrived(self, path: str, arrival: Arrival, now: float) -> None:
        """An event about `path` (call before observing it)."""
        if arrival is Arrival.CHANGED:
            return
        self.forget(path)  # its settle time, if any, starts again
        if arrival is Arrival.CREATED:
            self._open[path] = now
        elif arrival is Arrival.MOVED_IN:
            self._whole.add(path)
        elif arrival is Arrival.UNSURE:
            self._unsure.add(path)

    def observe(self, path: str, stat: FileStat | None, now: float) -> bool:
        """Record a fresh stat of `path` (None: gone); return True once it may be taken."""
        if stat is None:
            self.forget(path)
            return False
        if path in self._whole:
            self._whole.discard(path)
            return True
        if path in self._open:
            return False
        return self.tracker.observe(path, stat, now)

    def due(self, now: float) -> list[str]:
        """Paths whose settle time has passed: only these need a fresh stat."""
        return self.tracker.due(now)

    def stop_waiting(self, now: float) -> list[str]:
        """Held paths whose close did not come within `close_wait_seconds`: from now on they
        settle as listed files do (the caller stats them)."""
        waited = now - self.close_wait_seconds
        given_up = [path for path, since in self._open.items() if since <= waited]
        for path in given_up:
            del self._open[path]
        return given_up

    def take_unsure(self, path: str) -> bool:
        """Whether `path`, settled, is to be asked whether a writer still has it open."""
        unsure = path in self._unsure
        self._unsure.discard(path)
        return unsure

    def events_done(self) -> None:
        """Moved-in paths that were not stat'ed (not taken by the filter) are forgotten."""
        self._whole.clear()

    def events_lost(self) -> None:
        """Closes may be among the lost events: held files fall back to settle_seconds."""
        self._open.clear()

    def next_check(self) -> float | None:
        moments = [since + self.close_wait_seconds for since in self._open.values()]
        settle = self.tracker.next_check()
        if settle is not None:
            moments.append(settle)
        return min(moments, default=None)

    def forget(self, path: str) -> None:
        self._open.pop(path, None)
        self._whole.discard(path)
        self._unsure.discard(path)
        self.tracker.forget(path)

    def is_open(self, path: str) -> bool:
        return path in self._open

    def paths(self) -> list[str]:
        return [*self.tracker.paths(), *self._open]

    def __bool__(self) -> bool:
        return bool(self.tracker) or bool(self._open)

    def __contains__(self, path: str) -> bool:
        return path in self.tracker or path in self._open
