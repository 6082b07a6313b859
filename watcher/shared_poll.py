"""One status poll of an execution that carries several documents, and a decision for each.

The answer is asked for once per execution, never once per document: it is read once, so it
is stored for every document of the execution in the transaction that records the poll.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Protocol

from watcher.backend import PollKind, PollOutcome
from watcher.crashpoints import crash_point
from watcher.jobs import (
    Decision,
    Job,
    JobState,
    Outcome,
    decide_after_poll,
    needs_stored_copy,
)
from watcher.logs import about, get_logger
from watcher.metrics import Metrics
from watcher.packs import file_rounds
from watcher.runtime import Pipeline
from watcher.store import Store

log = get_logger()
TERMINAL_KINDS = (PollKind.COMPLETED, PollKind.FAILED)


class PollLoop(Protocol):
    """What a shared poll needs of the poll loop that runs it (reconcile.Reconciler)."""

    rng: random.Random

    @property
    def store(self) -> Store: ...

    @property
    def metrics(self) -> Metrics: ...

    def carry_out(self, decision: Decision, pipeline: Pipeline) -> None: ...

    def learn_duration(
        self, job: Job, pipeline: Pipeline, elapsed: float, files: int = 1
    ) -> None: ...


class SharedPoll:
    def __init__(self, loop: PollLoop, pipeline: Pipeline) -> None:
        self.loop = loop
        self.store = loop.store
        self.pipeline = pipeline

    def poll(self, execution: list[Job]) -> None:
        """Poll the execution of these claimed jobs, and record what it means for each."""
        execution_id = execution[0].execution_id
        assert execution_id is not None
        asked_at = self.store.clock()
        answer = self.pipeline.backend.poll_execution(execution_id)
        log.debug("polled", status=answer.server_status, documents=len(execution))
        if answer.kind in TERMINAL_KINDS:
            crash_point("after_poll")
        if needs_stored_copy(answer):
            answer = self._stored_answer(execution_id) or answer
        decided = self._decide(execution, answer)
        if decided[0][1].ended:
            elapsed = asked_at - (execution[0].submitted_at or asked_at)
            self.loop.learn_duration(execution[0], self.pipeline, elapsed, len(execution))
        body = answer.body if answer.kind in TERMINAL_KINDS else None
        recorded = self.store.record_execution_poll(
            decided, answer.http_status, body, _answer_decision(answer)
        )
        self.loop.metrics.polls.labels(self.pipeline.name, answer.kind.value).inc()
        for (job, decision), done in zip(decided, recorded, strict=True):
            with about(job):
                if done:
                    self.loop.carry_out(decision, self.pipeline)
                else:
                    log.warning("job changed while it was polled; leaving it")

    def _decide(self, execution: list[Job], answer: PollOutcome) -> list[tuple[Job, Decision]]:
        """A decision per document; the pipeline learns from the first only (one answer)."""
        names = [job.upload_name for job in execution]
        outcomes = self.pipeline.backend.results.file_outcomes(answer, names, shared=True)
        expected = self.pipeline.expected_execution_seconds
        if expected is not None:
            expected *= file_rounds(len(execution))
        now = self.store.clock()
        decided = []
        for index, (job, outcome) in enumerate(zip(execution, outcomes, strict=True)):
            elapsed = self.pipeline.seen_age(job.submitted_at or now, now)
            decision = decide_after_poll(
                outcome, job, elapsed, self.pipeline.policy, self.loop.rng, expected
            )
            decided.append(
                (job, decision if index == 0 else replace(decision, pipeline_change=None))
            )
        return decided

    def _stored_answer(self, execution_id: str) -> PollOutcome | None:
        """The execution's answer as another instance read and stored it, if one did."""
        stored = self.store.stored_result(execution_id)
        if stored is None or stored[2] is None:
            return None
        outcome, error, body = stored
        log.info("result already read by another instance; using its stored copy")
        kind = PollKind.COMPLETED if outcome == "success" else PollKind.FAILED
        status = body.get("status") if isinstance(body, dict) else None
        return PollOutcome(kind, status, None, error, body)


def _answer_decision(answer: PollOutcome) -> Decision:
    """The execution's own outcome, as `results` keeps it by execution id."""
    if answer.kind not in TERMINAL_KINDS:
        return Decision(JobState.SUBMITTED)
    outcome: Outcome = "success" if answer.kind is PollKind.COMPLETED else "failed"
    return Decision(JobState.RESULT_STORED, outcome=outcome, error=answer.error)
