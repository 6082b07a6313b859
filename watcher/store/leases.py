"""Leases: renewing the claims this process holds, and taking back those nobody holds.

An interrupted upload may have reached the server. It is submitted again, the one window
where a document can be executed twice, unless its pipeline is held: then it waits for an
operator (README, "What happens when..."). An interrupted fetch goes back to polling: the
status says whether the result is still there.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.jobs import JobState
from watcher.logs import get_logger
from watcher.store.schema import jobs
from watcher.store.statements import moved
from watcher.store.writes import StoreBase

FETCH_INTERRUPTED = "result fetch interrupted; checking the status"
UPLOAD_RESUBMITTED = "upload interrupted; outcome unknown, submitting again"
UPLOAD_HELD = "upload interrupted; outcome unknown, held for an operator"
log = get_logger()
# The states whose claims `release_claims` gives back once their lease ran out.
LEASED_STATES = (JobState.SUBMITTING, JobState.SUBMITTED, JobState.FETCHING, JobState.RESULT_STORED)


class Leases(StoreBase):
    @property
    def sole_writer(self) -> bool:
        """One daemon serves this database (SQLite): whatever a claim or a temp file of ours
        was left at start, it is a crash's leftover."""
        return self.db.is_sqlite

    def renew_leases(self, owner: str) -> int:
        """Extend the claims this instance's loops hold (a live instance never loses one,
        however slow an upload is); a claimed poll's next_poll_at moves with its lease."""
        held = self.db.held.held()
        if not held:
            return 0
        mine = (
            (jobs.c.lease_owner == owner)
            & jobs.c.lease_until.is_not(None)
            & jobs.c.id.in_(sorted(held))
        )
        polled = jobs.c.state == JobState.SUBMITTED.value
        renewed = self.db.now + self.lease_seconds
        with self.db.write() as conn:
            update = sa.update(jobs)
            count = conn.execute(update.where(mine & ~polled).values(lease_until=renewed)).rowcount
            count += conn.execute(
                update.where(mine & polled).values(lease_until=renewed, next_poll_at=renewed)
            ).rowcount
        return int(count)

    def release_leftover_claims(self, owner: str, hold: Sequence[str] = ()) -> tuple[int, int]:
        """At start: take back the claims our earlier life left, and those of instances that
        are gone. SQLite serves one daemon: every claim in it is ours from the last run."""
        return self.release_claims(everything=self.sole_writer, owner=owner, hold=hold)

    def release_claims(
        self, everything: bool = False, owner: str | None = None, hold: Sequence[str] = ()
    ) -> tuple[int, int]:
        """Take back the claims of instances that are gone: those whose lease ran out, those of
        `owner` (this instance's earlier life), or all (SQLite: we are the only instance).
        Return (interrupted uploads, interrupted fetches); uploads of pipelines in `hold` are
        held for an operator."""
        gone = sa.true() if everything else jobs.c.lease_until < self.db.now
        if owner is not None and not everything:
            gone = gone | (jobs.c.lease_owner == owner)
        with self.db.write() as conn:
            return self._release(conn, gone, hold)

    def next_lease_end_in(self) -> float | None:
        """Seconds until the first claim's lease runs out (<= 0: one has, and `release_claims`
        gives it back); None: nothing is claimed. A read: no write lock."""
        claimed = jobs.c.state.in_([s.value for s in LEASED_STATES])
        first_end = sa.select(sa.func.min(jobs.c.lease_until) - self.db.now).where(claimed)
        with self.db.read() as conn:
            first = conn.execute(first_end).scalar_one()
        return None if first is None else float(first)

    def claims_in_doubt(self) -> bool:
        """A write's answer was lost since the last `release_orphans`."""
        return self.db.held.in_doubt

    @property
    def doubt_raised(self) -> threading.Event:
        """Set each time a write's answer is lost, so the heartbeat need not look each second."""
        return self.db.held.doubt_raised

    def release_orphans(self, owner: str, hold: Sequence[str] = ()) -> int:
        """After a write whose answer was lost: give back every lease of ours that no loop
        holds; return how many. A claim never handed to a loop goes back as it was (nothing
        was sent, the attempt is refunded); anything else as `release_claims` treats a dead
        instance's: an upload that was sent counts as interrupted, a fetch goes back to
        polling, a poll is due at once, a result is free to be written."""
        held = self.db.held
        if not held.in_doubt:
            return 0
        try:
            with self.db.write() as conn:
                orphans, unsent = self._orphans(conn, owner)
                if not orphans:
                    held.checked(unsent)
                    return 0
                self._refund_unsent(conn, orphans & unsent)
                uploads, fetches = self._release(conn, jobs.c.id.in_(sorted(orphans)), hold)
        except BaseException:
            held.doubt()
            raise
        held.checked(unsent)
        log.warning(
            "claims whose answer was lost with the database connection are released",
            jobs=len(orphans),
            never_sent=len(orphans & unsent),
            interrupted_uploads=uploads,
            interrupted_fetches=fetches,
        )
        return len(orphans)

    def _refund_unsent(self, conn: Connection, unsent: set[int]) -> None:
        unused = jobs.c.id.in_(sorted(unsent))
        conn.execute(
            sa.update(jobs)
            .where(unused & (jobs.c.state == JobState.SUBMITTING.value))
            .values(
                state=moved(JobState.SUBMITTING, JobState.QUEUED),
                attempts=jobs.c.attempts - 1,
                next_attempt_at=self.db.now,
                lease_owner=None,
                lease_until=None,
            )
        )

    def _orphans(self, conn: Connection, owner: str) -> tuple[set[int], frozenset[int]]:
        """(rows leased to us that no loop holds, ids never handed out). The rows are locked
        first: a claim of ours still committing is held before its commit, so once its rows
        can be locked, the held set read after includes them."""
        self.db.held.clear_doubt()
        leased = conn.execute(
            sa.select(jobs.c.id)
            .where((jobs.c.lease_owner == owner) & jobs.c.lease_until.is_not(None))
            .order_by(jobs.c.id)
            .with_for_update()
        ).scalars()
        held, unsent = self.db.held.snapshot()
        return {int(i) for i in leased} - held, unsent

    def _free(self) -> dict[str, Any]:
        return {"lease_owner": None, "lease_until": None, "updated_at": self.db.now}

    def _release(self, conn: Connection, gone: Any, hold: Sequence[str]) -> tuple[int, int]:
        now, free = self.db.now, self._free()
        uploads = self._requeue_uploads(conn, gone, hold)
        fetches = conn.execute(
            sa.update(jobs)
            .where((jobs.c.state == JobState.FETCHING.value) & gone)
            .values(
                state=moved(JobState.FETCHING, JobState.SUBMITTED),
                next_poll_at=now,
                last_error=FETCH_INTERRUPTED,
                **free,
            )
        ).rowcount
        conn.execute(
            sa.update(jobs)
            .where((jobs.c.state == JobState.SUBMITTED.value) & gone)
            .where(jobs.c.lease_until.is_not(None))
            .values(next_poll_at=now, **free)
        )
        conn.execute(
            sa.update(jobs)
            .where((jobs.c.state == JobState.RESULT_STORED.value) & gone)
            .values(**free)
        )
        return uploads, int(fetches)

    def _requeue_uploads(self, conn: Connection, gone: Any, hold: Sequence[str]) -> int:
        interrupted = (jobs.c.state == JobState.SUBMITTING.value) & gone
        held = jobs.c.pipeline.in_(list(hold))
        resubmitted = conn.execute(
            sa.update(jobs)
            .where(interrupted & ~held)
            .values(
                state=moved(JobState.SUBMITTING, JobState.QUEUED),
                next_attempt_at=self.db.now,
                last_error=UPLOAD_RESUBMITTED,
                **self._free(),
            )
        ).rowcount
        kept = conn.execute(
            sa.update(jobs)
            .where(interrupted & held)
            .values(
                state=moved(JobState.SUBMITTING, JobState.HELD),
                last_error=UPLOAD_HELD,
                **self._free(),
            )
        ).rowcount
        return int(resubmitted) + int(kept)
