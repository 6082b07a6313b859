"""Loops, and the supervisor that runs each in its own thread.

A loop is a small object with a name, a heartbeat (`last_beat`, moved on per item of work)
and `run(stop)`, which returns once `stop` is set. The supervisor restarts a loop that a
database outage interrupted (its state is committed step by step, so it picks up where it
was) and stops the daemon when a loop raises anything else: systemd then restarts a whole
process, never a half-alive one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from watcher.logs import get_logger
from watcher.store import TRANSIENT_DB_ERRORS, db_error_text

log = get_logger()
OUTAGE_FIRST_WAIT_SECONDS = 1.0
OUTAGE_MAX_WAIT_SECONDS = 30.0


class Loop:
    """Base of the daemon's loops."""

    name = "loop"

    def __init__(self) -> None:
        self.last_beat = time.monotonic()

    def beat(self) -> None:
        """Moved on: the watchdog counts a loop hung when this stops for several leases."""
        self.last_beat = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        raise NotImplementedError


class Supervisor:
    """Starts loops, tells which are hung, and waits for them at the end."""

    def __init__(self, stop: threading.Event, on_failure: Callable[[], None]) -> None:
        self.stop = stop
        self.failure: BaseException | None = None  # what stopped the daemon, if a loop did
        self._on_failure = on_failure
        self._loops: list[Loop] = []
        self._threads: list[threading.Thread] = []

    def start(self, loops: Sequence[Loop]) -> None:
        for loop in loops:
            thread = threading.Thread(
                target=self.supervise, args=(loop,), name=loop.name, daemon=True
            )
            self._loops.append(loop)
            self._threads.append(thread)
            thread.start()

    def supervise(self, loop: Loop) -> None:
        """Run one loop until stop: an outage pauses it, any other error stops the daemon."""
        delay = OUTAGE_FIRST_WAIT_SECONDS
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                loop.run(self.stop)
                return
            except TRANSIENT_DB_ERRORS as exc:
                if time.monotonic() - started > OUTAGE_MAX_WAIT_SECONDS:
                    delay = OUTAGE_FIRST_WAIT_SECONDS  # a new outage, not the same one
                log.error(
                    "database unreachable; this loop waits and carries on",
                    loop=loop.name,
                    error=db_error_text(exc),
                    retry_in_seconds=delay,
                )
                self.stop.wait(delay)
                delay = min(2 * delay, OUTAGE_MAX_WAIT_SECONDS)
            except BaseException as exc:
                log.exception("a daemon loop crashed; stopping", loop=loop.name)
                self.failure = exc
                self._on_failure()
                return

    def hung(self, beat_before: float) -> list[str]:
        """Loops whose thread died, or whose heartbeat is older than `beat_before`."""
        dead = [t.name for t in self._threads if not t.is_alive()]
        return dead + [loop.name for loop in self._loops if loop.last_beat < beat_before]

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, deadline: float) -> list[str]:
        """Wait for every loop until the monotonic `deadline`; return those still running."""
        for thread in self._threads:
            thread.join(max(1.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]
