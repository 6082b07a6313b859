"""The heartbeat: keeps alive the claims this process's loops hold, and gives back leases of
ours that no loop holds (a write whose commit answer was lost) so nothing waits for them.
At a low pace it also drops the stored answers that `keep_results_days` no longer keeps, and
keeps what each pipeline has learnt of its executions' time for the next start."""

from __future__ import annotations

import threading
import time

from watcher.backends import stored_cost
from watcher.context import Context, Live
from watcher.logs import get_logger
from watcher.store.expiry import EXPIRY_BATCH
from watcher.supervisor import Loop

ORPHAN_CHECK_SECONDS = 1.0  # while a claim is in doubt (an outage): how often to try again
EXPIRY_PASS_SECONDS = 30.0  # a batch of answers to drop, when nothing more is known to be due
EXPIRY_CATCH_UP_SECONDS = 1.0  # the last batch was full: more are due (an old database)
log = get_logger()


def idle_wait(now: float, next_due: float, in_doubt: bool) -> float:
    """Until the next renewal or expiry pass (a new doubt about a lease wakes us sooner); a
    doubt still there (its check failed: the database is away) is looked at each second."""
    return ORPHAN_CHECK_SECONDS if in_doubt else max(0.0, next_due - now)


class Heartbeat(Loop):
    name = "heartbeat"

    def __init__(self, live: Live) -> None:
        super().__init__()
        self.live = live
        self.expire_at = 0.0  # monotonic time of the next expiry pass
        self._kept: dict[str, float] = {}  # execution times last written, by pipeline

    def run(self, stop: threading.Event) -> None:
        renew_at = 0.0
        while not stop.is_set():
            context = self.live.current
            store = context.store
            context.wakes.heartbeat.clear()  # a doubt raised from here on ends the next wait
            if stop.is_set():  # a stop's wake_all may have come just before that clear
                break
            self.beat()
            if time.monotonic() >= renew_at:  # at a third of the lease
                store.renew_leases(context.owner)
                renew_at = time.monotonic() + store.lease_seconds / 3
            if store.release_orphans(context.owner, hold=context.hold_pipelines()):
                context.wakes.wake_all()
            if time.monotonic() >= self.expire_at:
                self.expire_answers(context)
                self.keep_estimates(context)
            due = min(renew_at, self.expire_at)
            wait = idle_wait(time.monotonic(), due, store.claims_in_doubt())
            context.wakes.heartbeat.wait(wait)

    def keep_estimates(self, context: Context) -> None:
        """Write each pipeline's execution time estimate that changed since it was last
        written (a hint for the next start: a crash loses at most this pace's worth)."""
        for name, pipeline in context.pipelines.items():
            seconds = pipeline.expected_execution_seconds
            if seconds is not None and self._kept.get(name) != seconds:
                context.store.remember_execution_seconds(name, seconds)
                self._kept[name] = seconds

    def expire_answers(self, context: Context) -> int:
        """One batch of stored answers past `keep_results_days` dropped; returns how many."""
        self.expire_at = time.monotonic() + EXPIRY_PASS_SECONDS  # an outage: not at once again
        keep_seconds = context.settings.database.keep_results_days * 86400.0
        dropped = context.store.drop_expired_answers(keep_seconds, stored_cost)
        if dropped:
            log.debug("stored answers dropped", count=dropped)
        if dropped >= EXPIRY_BATCH:
            self.expire_at = time.monotonic() + EXPIRY_CATCH_UP_SECONDS
        return dropped
