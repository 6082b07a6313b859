"""The notice sender: a side loop that POSTs the outbox's notices to the webhook.

Oldest first, one at a time. A notice the receiver accepts (2xx) is deleted; any other answer
or a transport error keeps it, and the loop waits (doubling up to retry_max_seconds) before the
next try, so a receiver that is down costs one request per wait, and the pipeline never waits
for it. A kill between the POST and the delete sends that one notice again after the restart:
its `id` (also in the X-Unstract-Watcher-Delivery header) lets a receiver drop the repeat.
The URL and the secret are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import threading
import time
from urllib.parse import urlsplit

import httpx

from watcher.config import NotifyConfig
from watcher.context import ContextLoop, Live
from watcher.logs import get_logger
from watcher.notices import Notice, body, retry_delay
from watcher.store import retry_transient
from watcher.store.outbox import (
    claim_due_notices,
    next_notice_due_in,
    notice_failed,
    notice_sent,
    postpone_notices,
    release_earlier_claims,
)

log = get_logger()
BATCH = 32
IDLE_WAIT_SECONDS = 1.0  # how often an idle sender looks for new notices
LEASE_SECONDS = 120.0  # a claimed batch is ours this long, and at least three POSTs' time
LEASE_MARGIN_SECONDS = 10.0
SIGNATURE_HEADER = "X-Unstract-Watcher-Signature"


class Notifier(ContextLoop):
    """The loop that sends the outbox's notices to `config`'s webhook."""

    name = "notify"

    def __init__(self, live: Live, config: NotifyConfig) -> None:
        super().__init__(live)
        self.config = config
        self.receiver = urlsplit(config.webhook_url.get_secret_value()).hostname or "?"
        self.client = httpx.Client()  # replaced in run(), closed when it returns
        self._failures = 0  # in a row: sets the wait

    def run(self, stop: threading.Event) -> None:
        # A fresh client each time the supervisor (re)starts the loop after a database outage.
        self.client = httpx.Client(timeout=self.config.timeout_seconds, follow_redirects=False)
        try:
            release_earlier_claims(self.store)
            while not stop.is_set():
                self.beat()
                stop.wait(self.send_due(stop))
        finally:
            self.client.close()

    def send_due(self, stop: threading.Event) -> float:
        """Send what is due; return how long to wait before looking again."""
        lease = max(LEASE_SECONDS, 3 * self.config.timeout_seconds)
        notices = claim_due_notices(self.store, BATCH, lease)
        # A POST started after this could end after the lease, when another instance may
        # have claimed the same notice: the rest of the batch is claimed again instead.
        last_start = time.monotonic() + lease - self.config.timeout_seconds - LEASE_MARGIN_SECONDS
        for index, notice in enumerate(notices):
            self.beat()
            if stop.is_set() or self.last_beat > last_start:  # not tried: due again now
                postpone_notices(self.store, notices[index:], 0.0)
                return 0.0
            error = self._post(notice)
            if error is None:
                # Retried through a database blip: a notice the receiver took and that
                # stayed in the outbox would be sent again.
                retry_transient(notice_sent)(self.store, notice)
                self._count(notice, "sent")
                self._failures = 0
                continue
            wait = self._wait_after_failure()
            retry_transient(notice_failed)(self.store, notice, wait, error)
            self._count(notice, "failed")
            postpone_notices(self.store, notices[index + 1 :], wait)
            return wait
        due = next_notice_due_in(self.store)
        return IDLE_WAIT_SECONDS if due is None else min(IDLE_WAIT_SECONDS, max(0.0, due))

    def _wait_after_failure(self) -> float:
        self._failures += 1
        return retry_delay(self._failures, self.config.retry_max_seconds, random.uniform(0.5, 1))

    def _post(self, notice: Notice) -> str | None:
        """POST one notice; None if the receiver took it, else why not (without the URL)."""
        content = body(notice, self.config.format)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "unstract-watcher",
            "X-Unstract-Watcher-Event": notice.event,
            "X-Unstract-Watcher-Delivery": str(notice.id),
        }
        secret = self.config.secret.get_secret_value()
        if secret:
            digest = hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
        try:
            answer = self.client.post(
                self.config.webhook_url.get_secret_value(), content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            reason = str(exc).replace(self.config.webhook_url.get_secret_value(), "webhook_url")
            return self._failed(notice, f"{type(exc).__name__}: {reason}")
        if 200 <= answer.status_code < 300:
            return None
        return self._failed(notice, f"HTTP {answer.status_code}")

    def _failed(self, notice: Notice, error: str) -> str:
        log.warning(
            "the webhook did not take a notice; will retry",
            receiver=self.receiver,
            notice_id=notice.id,
            notice_event=notice.event,
            error=error[:200],
            attempts=notice.attempts + 1,
        )
        return error

    def _count(self, notice: Notice, outcome: str) -> None:
        self.metrics.notices.labels(notice.pipeline, notice.event, outcome).inc()
