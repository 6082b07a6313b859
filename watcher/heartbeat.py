"""The heartbeat: keeps alive the claims this process's loops hold, and gives back leases of
ours that no loop holds (a write whose commit answer was lost) so nothing waits for them."""

from __future__ import annotations

import threading
import time

from watcher.context import Live
from watcher.supervisor import Loop

ORPHAN_CHECK_SECONDS = 1.0  # costs no query unless a claim is in doubt


class Heartbeat(Loop):
    name = "heartbeat"

    def __init__(self, live: Live) -> None:
        super().__init__()
        self.live = live

    def run(self, stop: threading.Event) -> None:
        renew_at = 0.0
        while not stop.is_set():
            self.beat()
            context = self.live.current
            store = context.store
            if time.monotonic() >= renew_at:  # at a third of the lease
                store.renew_leases(context.owner)
                renew_at = time.monotonic() + store.lease_seconds / 3
            if store.release_orphans(context.owner, hold=context.hold_pipelines()):
                context.wakes.wake_all()
            stop.wait(ORPHAN_CHECK_SECONDS)
