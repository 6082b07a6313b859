"""Which claims this process's loops hold right now: the only leases the heartbeat renews.

A claim is held from the moment its transaction returns the rows (before the commit) until the
loop records the job's next state or lets it go. When a claim's commit fails, or any write's
answer is lost with the connection, the database may hold a lease of ours that no loop knows
of. Such a row would be renewed forever if the heartbeat renewed every lease of this owner; it
is renewed by nobody instead, and `Store.release_orphans` gives it back (reliability-notes C:
a stalled job must become claimable again without a restart).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class HeldClaims:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._unsent: set[int] = set()  # claimed, never handed to a loop: nothing was sent
        self._doubt = False  # a write's answer was lost: a lease of ours may be orphaned
        self.doubt_raised = threading.Event()  # set with each doubt: the heartbeat checks

    def take(self, ids: Iterable[int]) -> None:
        with self._lock:
            ids = set(ids)
            self._held |= ids
            self._unsent -= ids

    def drop(self, ids: Iterable[int]) -> bool:
        """No longer held; True if any of them was."""
        with self._lock:
            ids = set(ids) & self._held
            self._held -= ids
            return bool(ids)

    def never_handed_out(self, ids: Iterable[int]) -> None:
        """A claim whose commit failed: its rows may be leased to us, unused by any loop."""
        with self._lock:
            ids = set(ids)
            self._held -= ids
            self._unsent |= ids
            self._doubt = True
        self.doubt_raised.set()

    def doubt(self) -> None:
        with self._lock:
            self._doubt = True
        self.doubt_raised.set()

    @property
    def in_doubt(self) -> bool:
        return self._doubt

    def held(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._held)

    def clear_doubt(self) -> None:
        """At the start of an orphan check: a write that fails during it raises it again."""
        with self._lock:
            self._doubt = False

    def snapshot(self) -> tuple[frozenset[int], frozenset[int]]:
        """(held, never handed out)."""
        with self._lock:
            return frozenset(self._held), frozenset(self._unsent)

    def checked(self, unsent: Iterable[int]) -> None:
        with self._lock:
            self._unsent -= set(unsent)
