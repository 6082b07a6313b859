"""The reconciler: poll loops (a few threads, not one per job) that poll every in-flight
execution when its next poll is due.

A terminal answer is stored in the job row in the same transaction that records the outcome,
before any file is written: the server hands results out once (unstract-api-behaviour.md s. 8).
"""

from __future__ import annotations

import random
import threading
import time

from watcher.backend import PollKind
from watcher.context import ContextLoop, LastLook, Live
from watcher.crashpoints import crash_point
from watcher.jobs import Job, StoredCopy, decide_after_poll, needs_stored_copy
from watcher.logs import about, about_execution, get_logger
from watcher.packs import file_rounds
from watcher.runtime import Pipeline
from watcher.shared_poll import SharedPoll

log = get_logger()
BATCH = 4  # each of the poll loops takes a few executions at a time, so they share the due ones
MAX_IDLE_SECONDS = 2.0
HELPER_MAX_IDLE_SECONDS = 10.0  # well under the hung-loop limit (3 leases, each over 10 s)
MIN_WAIT_SECONDS = 0.01
SWEEP_SECONDS = 10.0
TERMINAL_KINDS = (PollKind.COMPLETED, PollKind.FAILED)


def report_released(uploads: int, fetches: int) -> None:
    if uploads:
        log.warning("uploads interrupted by the last stop are queued again", jobs=uploads)
    if fetches:
        log.warning("result fetches interrupted by the last stop are checked again", jobs=fetches)


class Reconciler(ContextLoop):
    """One poll loop. The first (`sweeps`) also takes back the claims of instances that died."""

    def __init__(self, live: Live, index: int = 0) -> None:
        super().__init__(live)
        self.name = f"poll-{index}"
        self.sweeps = index == 0
        self._next_sweep = 0.0
        self.rng = random.Random()
        self.last_look = LastLook()  # of the due polls, while idle
        self.sweep_look = LastLook()  # of the leases, for the sweep

    def run(self, stop: threading.Event) -> None:
        busy = False  # the last round polled something: look for more straight away
        while not stop.is_set():
            self.beat()
            if self.sweeps:
                self.sweep()
            wait = 0.0 if busy else self._idle_wait()  # a read: no write lock when idle
            busy = wait <= 0 and self.poll_due(stop) > 0
            if not busy:  # until the earliest poll is due, or a new submission
                self.wakes.submitted.wait(max(wait, MIN_WAIT_SECONDS))

    def _idle_wait(self) -> float:
        """Sleep until the earliest poll is due (a new submission wakes us sooner); other
        instances' work and leases that run out are noticed within MAX_IDLE_SECONDS by the
        sweeping loop (the others wait longer: idle, the daemon should cost nothing). A sole
        writer (SQLite) has no other instances: every submission is this process's, and
        wakes us."""
        looks = self.sweeps and not self.store.sole_writer
        longest = MAX_IDLE_SECONDS if looks else HELPER_MAX_IDLE_SECONDS
        due_in = self.due_in(self.last_look, self.store.next_poll_due_in, self.context.reachable())
        if due_in is None:
            return longest
        return min(longest, max(0.0, due_in))

    def sweep(self) -> None:
        """Take back what an instance that died had claimed, once its leases ran out."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        ends_in = self.due_in(self.sweep_look, lambda _: self.store.next_lease_end_in(), [])
        if ends_in is None or ends_in > 0:
            return  # no lease ran out: nothing to take back (on SQLite, idle: not even a read)
        uploads, fetches = self.store.release_claims(hold=self.context.hold_pipelines())
        report_released(uploads, fetches)
        if uploads:
            self.wakes.work.set()

    def poll_due(self, stop: threading.Event) -> int:
        """Poll every execution whose next poll is due; return how many were polled."""
        due = self.store.claim_due_polls(self.owner, self._batch(), self.context.reachable())
        polled: set[int] = set()  # each poll ends its jobs' claims; the rest are let go
        try:
            for execution in by_execution(due):
                if stop.is_set():
                    break  # polled again on the next start
                self.beat()
                self._poll_claimed(execution)
                polled.update(job.id for job in execution)
        finally:
            self.store.let_go(job for job in due if job.id not in polled)
        return len(due)

    def _batch(self) -> int:
        """Jobs per claim: a few executions, of as many documents as a pipeline packs."""
        packs = [p.backend.files_per_execution for p in list(self.pipelines.values())]
        return BATCH * max(packs, default=1)

    def _poll_claimed(self, execution: list[Job]) -> None:
        pipeline = self.pipelines.get(execution[0].pipeline)
        if pipeline is None:  # removed by a reload: its jobs wait for it to return
            for job in execution:
                self.store.release_poll(job)
            return
        if pipeline.outage is not None:  # since the claim: polled once a probe gets through
            for job in execution:
                self.store.release_poll(job)
            return
        if any(job.shares_execution for job in execution):
            with about_execution(execution):
                SharedPoll(self, pipeline).poll(execution)
            return
        for job in execution:
            with about(job):
                self.poll(job, pipeline)

    def poll(self, job: Job, pipeline: Pipeline) -> None:
        assert job.execution_id is not None
        asked_at = self.store.clock()  # the database's clock, as submitted_at is
        outcome = pipeline.backend.poll(job.execution_id, job.upload_name)
        log.debug(
            "polled",
            status=outcome.server_status,
            http_status=outcome.http_status,
            expected_seconds=pipeline.expected_execution_seconds,
        )
        fetched = outcome.kind is PollKind.READY
        if fetched:
            # A read-once fetch: commit that it is under way, so a crash mid-fetch is known.
            if not self.store.begin_fetch(job):
                return
            fetch = pipeline.backend.fetch
            assert fetch is not None, "only a backend that fetches answers READY"
            outcome = fetch(job.execution_id, job.upload_name)
        if outcome.kind in TERMINAL_KINDS:
            crash_point("after_poll")
        stored = self._stored_copy(job) if needs_stored_copy(outcome) else None
        now = self.store.clock()
        decision = decide_after_poll(
            outcome,
            job,
            pipeline.seen_age(job.submitted_at or now, now),
            pipeline.policy,
            self.rng,
            pipeline.expected_execution_seconds,
            fetched=fetched,
            stored=stored,
        )
        if decision.ended:
            self.learn_duration(job, pipeline, asked_at - (job.submitted_at or asked_at))
        recorded = self.store.record_poll(
            job, decision, outcome.http_status, decision.result_body, fetched
        )
        if not recorded:
            log.warning("job changed while it was polled; leaving it to its new owner")
            return
        self.metrics.polls.labels(pipeline.name, outcome.kind.value).inc()
        self.carry_out(decision, pipeline)

    @staticmethod
    def learn_duration(job: Job, pipeline: Pipeline, elapsed: float, files: int = 1) -> None:
        """Learnt per round of files (an execution of n takes about file_rounds(n) file
        times), so one estimate serves executions of any size; and only from executions
        whose end could be seen on time (none that ran through an outage)."""
        if job.submitted_at is not None:
            if not pipeline.saw_on_time(job.submitted_at, job.submitted_at + elapsed):
                return
        polled_before = None  # when a poll last saw it running
        if job.poll_count and job.submitted_at is not None:
            polled_before = (job.updated_at - job.submitted_at) / file_rounds(files)
        rounds = file_rounds(files)
        pipeline.observe_execution(elapsed / rounds, polled_before, job.execution_id)

    def _stored_copy(self, job: Job) -> StoredCopy | None:
        """Another instance's stored outcome of this execution, if it read the result."""
        assert job.execution_id is not None
        stored = self.store.stored_result(job.execution_id)
        if stored is None:
            return None
        outcome, error, body = stored
        return StoredCopy("success" if outcome == "success" else "failed", error, body)


def by_execution(due: list[Job]) -> list[list[Job]]:
    """Claimed jobs grouped by the execution they share, in the order claimed."""
    groups: dict[str | None, list[Job]] = {}
    for job in due:
        groups.setdefault(job.execution_id, []).append(job)
    return list(groups.values())
