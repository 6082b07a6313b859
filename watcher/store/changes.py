"""Whether anyone committed to the database since an idle loop last looked at it.

SQLite's `PRAGMA data_version` changes whenever another connection (of this process or of
another: an operator's `retry`) has committed, and costs microseconds on a connection of its
own, without SQLAlchemy; a loop that compares it with the value it saw at its last look may
skip the query that would find the same answer. PostgreSQL has no such cheap question: there
a loop looks each time.
"""

from __future__ import annotations

import os
import sqlite3
import threading


class ChangeCounter:
    """A read-only connection that asks SQLite's data_version, shared by the loops."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None  # opened at the first question
        self._lock = threading.Lock()

    def version(self) -> int | None:
        """A number that differs from the last one whenever a commit came in between; None
        when SQLite cannot tell now (busy, gone): the caller looks at the table instead."""
        with self._lock:
            try:
                if self._conn is None:
                    if not os.path.exists(self._path):  # connect would create it
                        return None
                    self._conn = sqlite3.connect(
                        self._path, check_same_thread=False, isolation_level=None
                    )
                return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                return None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
