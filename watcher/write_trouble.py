"""Folders that result files cannot be written to (no permission, a read-only or full file
system, a folder gone): what the finisher found, said once per problem, not at every retry.

/healthz reports each problem until a file is written to its folder, or until no result waits
to be written; `run --once` exits with them instead of waiting for a fix it cannot get.
"""

from __future__ import annotations

import threading
from pathlib import Path

from watcher.filters import as_text
from watcher.logs import get_logger

log = get_logger()


class WriteTrouble:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[Path, str] = {}  # folder -> the last error there
        self._round: dict[Path, str] = {}  # what the round under way found
        self.stuck = (
            False  # the last round wrote none of the results it claimed, for want of a folder
        )

    def failed(self, folder: Path, error: str) -> None:
        """A file could not be written to (or synced in) this folder in this round."""
        self._round[folder] = error

    def round_ended(self, claimed: int, written: set[Path]) -> None:
        """A round of the finisher is over: `written`, the folders it wrote files to."""
        found, self._round = self._round, {}
        with self._lock:
            before = dict(self._problems)
            if not claimed:  # nothing waits to be written: nothing can be wrong
                self._problems.clear()
            for folder in written - set(found):
                self._problems.pop(folder, None)
            self._problems.update(found)
            now = dict(self._problems)
        # Only a folder's refusal: a result table that refuses rows may be back any moment.
        self.stuck = bool(claimed) and not written and bool(now)
        for folder, error in now.items():
            if before.get(folder) != error:
                log.error(
                    f"results cannot be written: {as_text(str(folder))}: {error}; they stay "
                    "stored and are tried again"
                )
        for folder in before.keys() - now.keys():
            log.info("results can be written again", folder=as_text(str(folder)))

    def problems(self) -> list[str]:
        """One line per folder, for /healthz and `run --once`."""
        with self._lock:
            problems = sorted(self._problems.items())
        return [f"results cannot be written: {as_text(str(f))}: {error}" for f, error in problems]
