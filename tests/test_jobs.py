"""The pure decisions: what each API answer does to a job, and the retry/poll schedules."""

from __future__ import annotations

import random
from typing import Any

import pytest

from watcher.backend import PollKind, PollOutcome, SubmitKind, SubmitOutcome
from watcher.files import TooLarge
from watcher.jobs import (
    TRANSITIONS,
    Job,
    JobState,
    PipelineChange,
    StoredCopy,
    Wake,
    can_move,
    decide_after_poll,
    decide_after_submit,
    decide_before_upload,
    decide_content,
    decide_unreadable,
)
from watcher.schedule import (
    RetryPolicy,
    backoff_seconds,
    next_poll_seconds,
    poll_delay_seconds,
    updated_estimate,
)

POLICY = RetryPolicy(max_attempts=3, execution_deadline_seconds=600)


def job(**changes: Any) -> Job:
    values: dict[str, Any] = dict(
        id=1,
        pipeline="p",
        relative_path="in/a.pdf",
        sha256="0" * 64,
        size=1,
        mtime_ns=1,
        state=JobState.SUBMITTED,
        attempts=1,
        execution_id="e1",
        poll_count=0,
        outcome=None,
        result_body=None,
        last_http_status=None,
        last_error="",
        lease_owner=None,
        created_at=0.0,
        submitted_at=0.0,
        updated_at=0.0,
    )
    values.update(changes)
    return Job(**values)


def rng() -> random.Random:
    return random.Random(7)


def test_every_state_has_its_transitions_listed() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert can_move(JobState.QUEUED, JobState.SUBMITTING)
    assert not can_move(JobState.DONE, JobState.QUEUED)
    assert can_move(JobState.FAILED, JobState.QUEUED)  # an operator's retry


@pytest.mark.parametrize(
    ("outcome", "attempts", "state", "result"),
    [
        (SubmitOutcome(SubmitKind.ACCEPTED, "e1", 200), 1, JobState.SUBMITTED, None),
        (SubmitOutcome(SubmitKind.RETRY, None, 503, "down"), 1, JobState.QUEUED, None),
        (SubmitOutcome(SubmitKind.RETRY, None, 503, "down"), 3, JobState.RESULT_STORED, "failed"),
        (SubmitOutcome(SubmitKind.UNKNOWN, None, None, "ReadTimeout"), 1, JobState.QUEUED, None),
        (
            SubmitOutcome(SubmitKind.DOCUMENT_FAILED, None, 400, "empty"),
            1,
            JobState.RESULT_STORED,
            "failed",
        ),
        (
            SubmitOutcome(SubmitKind.PIPELINE_BROKEN, None, 401, "Unauthorized"),
            3,
            JobState.QUEUED,
            None,
        ),
    ],
)
def test_after_submit(
    outcome: SubmitOutcome, attempts: int, state: JobState, result: str | None
) -> None:
    decision = decide_after_submit(outcome, attempts, POLICY, rng())
    assert decision.state is state
    assert decision.outcome == result
    if state is JobState.SUBMITTED:
        assert decision.execution_id == "e1"


def test_a_broken_pipeline_pauses_and_does_not_use_up_attempts() -> None:
    outcome = SubmitOutcome(SubmitKind.PIPELINE_BROKEN, None, 401, "Unauthorized")
    decision = decide_after_submit(outcome, 3, POLICY, rng())
    assert decision.pause_pipeline and decision.refund_attempt


def body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"status": "COMPLETED", "message": list(items)}


OK_ITEM = {"file": "a.pdf", "status": "Success", "result": {"output": {}}, "error": None}


@pytest.mark.parametrize(
    ("outcome", "state", "result", "error_part"),
    [
        (PollOutcome(PollKind.RUNNING, "EXECUTING", 422), JobState.SUBMITTED, None, ""),
        (
            PollOutcome(PollKind.RETRY, None, 502, "bad gateway"),
            JobState.SUBMITTED,
            None,
            "bad gateway",
        ),
        (
            PollOutcome(PollKind.COMPLETED, "COMPLETED", 200, body=body(OK_ITEM)),
            JobState.RESULT_STORED,
            "success",
            "",
        ),
        (
            PollOutcome(
                PollKind.FAILED,
                "ERROR",
                422,
                "bad scan",
                body={
                    "status": "ERROR",
                    "message": [{"file": "a.pdf", "status": "Failed", "error": "bad scan"}],
                },
            ),
            JobState.RESULT_STORED,
            "failed",
            "bad scan",
        ),
        (
            PollOutcome(
                PollKind.FAILED, "STOPPED", 422, "", body={"status": "STOPPED", "message": None}
            ),
            JobState.RESULT_STORED,
            "failed",
            "STOPPED",
        ),
        (
            PollOutcome(PollKind.RESULT_GONE, "COMPLETED", 406, "result already read"),
            JobState.QUEUED,
            None,
            "again",
        ),
        (PollOutcome(PollKind.LOST, None, 404, "does not exist"), JobState.QUEUED, None, "again"),
        (
            PollOutcome(PollKind.PIPELINE_BROKEN, None, 401, "Unauthorized"),
            JobState.SUBMITTED,
            None,
            "Unauthorized",
        ),
    ],
)
def test_after_poll(
    outcome: PollOutcome, state: JobState, result: str | None, error_part: str
) -> None:
    decision = decide_after_poll(outcome, job(), 10.0, POLICY, rng())
    assert decision.state is state
    assert decision.outcome == result
    assert error_part in decision.error


def test_a_gone_result_is_resubmitted_only_a_bounded_number_of_times() -> None:
    gone = PollOutcome(PollKind.RESULT_GONE, "COMPLETED", 406, "result already read")
    decision = decide_after_poll(gone, job(attempts=3), 10.0, POLICY, rng())
    assert decision.state is JobState.RESULT_STORED
    assert decision.outcome == "failed"
    assert "gave up after 3 attempts" in decision.error


def test_an_execution_past_its_deadline_fails_visibly() -> None:
    running = PollOutcome(PollKind.RUNNING, "PENDING", 422)
    decision = decide_after_poll(running, job(), 601.0, POLICY, rng())
    assert decision.outcome == "failed"
    assert "did not finish within 600 s" in decision.error


def test_poll_intervals_grow_to_the_cap() -> None:
    policy = RetryPolicy(poll_initial_seconds=0.25, poll_max_seconds=30.0)
    delays = [poll_delay_seconds(n, policy) for n in range(20)]
    assert delays[0] == 0.25
    assert delays == sorted(delays)
    assert delays[-1] == 30.0


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff_base_seconds=2.0, backoff_cap_seconds=60.0)
    generator = random.Random(1)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        samples = [backoff_seconds(attempt, policy, generator) for _ in range(50)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1  # jitter spreads retries of many documents


def test_with_a_typical_duration_the_first_poll_comes_just_before_it() -> None:
    policy = RetryPolicy(poll_initial_seconds=0.25, poll_max_seconds=30.0)
    schedule, elapsed = [], 0.0
    while elapsed < 6.0:  # a 5 s execution, typical duration 5 s
        elapsed += next_poll_seconds(elapsed, len(schedule), 5.0, policy)
        schedule.append(round(elapsed, 2))
    assert schedule == [4.5, 5.0, 5.5, 6.0]  # done by the poll at 5.0: 2 polls, no delay
    assert next_poll_seconds(0.0, 0, None, policy) == 0.25  # no estimate yet
    assert next_poll_seconds(0.0, 0, 0.01, policy) == 0.02  # instant executions: 20 ms
    assert next_poll_seconds(100.0, 40, 5.0, policy) == 30.0  # a straggler: back to the cap


def _simulate(
    durations: list[float], lag: float, side_by_side: int = 1
) -> tuple[list[int], list[float]]:
    """Executions of the given durations, `side_by_side` at a time (each group submitted
    together and so polled on one schedule), polled `lag` seconds late, the estimate learnt
    as the reconciler learns it: polls per execution, and delays."""
    policy = RetryPolicy(poll_initial_seconds=0.25, poll_max_seconds=30.0)
    expected: float | None = None
    polls, delays = [], []
    for duration in durations:
        elapsed, previous, count = 0.0, None, 0
        while True:
            elapsed += next_poll_seconds(elapsed, count, expected, policy) + lag
            count += 1
            if elapsed >= duration:
                break
            previous = elapsed
        for index in range(side_by_side):  # one step down per group (Pipeline decides)
            expected = updated_estimate(expected, elapsed, previous, shrink=index == 0)
        polls.append(count)
        delays.append(elapsed - duration)
    return polls, delays


def test_the_learnt_schedule_needs_few_polls_and_does_not_creep() -> None:
    for side_by_side in (1, 20):
        polls, delays = _simulate([5.0] * 200, lag=0.03, side_by_side=side_by_side)
        assert sum(polls[20:]) / 180 <= 3.0
        assert max(delays[20:]) < 1.0  # about one step of 10 %, however long it runs
        assert max(delays[-20:]) < 1.0  # no creep by the lag over 200 rounds


def test_instant_executions_are_polled_at_once() -> None:
    polls, delays = _simulate([0.005] * 100, lag=0.01)
    assert polls[-20:] == [1] * 20
    assert max(delays[-20:]) < 0.15


def test_the_reconcilers_own_lateness_does_not_hold_instant_executions_back() -> None:
    polls, delays = _simulate([0.005] * 100, lag=0.03)  # a busy reconciler, 30 ms late
    assert polls[-20:] == [1] * 20
    assert max(delays[-20:]) < 0.1  # not lag / (1 - EARLY_FRACTION) = 0.3 s


def test_a_slower_or_faster_service_is_followed() -> None:
    for side_by_side in (1, 20):
        durations = [2.0] * 50 + [8.0] * 50 + [1.0] * 150
        polls, delays = _simulate(durations, 0.03, side_by_side)
        assert max(delays[90:100]) < 1.0  # caught up with the slowdown
        assert max(delays[-10:]) < 0.3  # and with the speed-up
        assert sum(polls[-10:]) / 10 <= 3.0


def test_executions_ending_side_by_side_do_not_drag_the_estimate_down() -> None:
    polls, _ = _simulate([5.0] * 10, lag=0.03, side_by_side=20)
    assert max(polls[1:]) <= 3


def test_the_estimate_takes_what_is_known() -> None:
    assert updated_estimate(None, 5.5, 5.0) == 5.25  # ended in between: the middle
    assert updated_estimate(5.0, 6.0, 5.5) == 5.0 + 0.2 * 0.75  # averaged in
    assert updated_estimate(None, 0.25, None) == 0.25  # ended by the first poll: at most that
    assert updated_estimate(5.0, 4.5, None) == 4.5
    assert updated_estimate(5.0, 5.2, None) == 5.0  # a late first poll says nothing new
    assert updated_estimate(5.0, 5.2, None, shrink=True) == 4.5  # ... but try earlier
    assert updated_estimate(5.0, 5.5, 5.0, shrink=True) == 5.0 + 0.2 * 0.25  # no step


# What a decision asks the loop to do next, besides the row it writes.
def test_an_accepted_upload_wakes_a_poll_loop_and_widens_the_pipeline() -> None:
    outcome = SubmitOutcome(SubmitKind.ACCEPTED, "e9", 200)
    decision = decide_after_submit(outcome, 1, POLICY, random.Random(1))
    assert decision.wakes == {Wake.POLLS} and decision.pipeline_change is PipelineChange.ACCEPTED
    assert [line.event for line in decision.logs] == ["submitted"]


def test_a_429_narrows_the_pipeline_and_counts_a_retry() -> None:
    outcome = SubmitOutcome(SubmitKind.RETRY, None, 429, "busy", rate_limited=True)
    decision = decide_after_submit(outcome, 1, POLICY, random.Random(1))
    assert decision.pipeline_change is PipelineChange.RATE_LIMITED and not decision.wakes
    assert (decision.error_kind, decision.retry_stage) == ("rate_limited", "upload")


def test_a_refused_key_pauses_without_a_retry_count() -> None:
    outcome = SubmitOutcome(SubmitKind.PIPELINE_BROKEN, None, 401, "")
    decision = decide_after_submit(outcome, 1, POLICY, random.Random(1))
    assert decision.pause_pipeline and decision.pause_reason == "HTTP 401"
    assert decision.retry_stage is None and decision.error_kind == "pipeline_refused"


def test_an_ended_execution_stores_its_body_and_wakes_the_finisher_and_an_uploader() -> None:
    body = {"status": "COMPLETED"}
    outcome = PollOutcome(PollKind.COMPLETED, "COMPLETED", 200, body=body)
    decision = decide_after_poll(outcome, job(), 5.0, POLICY, random.Random(1))
    assert decision.result_body == body and decision.ended
    assert decision.wakes == {Wake.FINISHER, Wake.UPLOADS}


def test_a_result_gone_uses_another_instances_stored_copy() -> None:
    outcome = PollOutcome(PollKind.RESULT_GONE, None, 406, "gone")
    stored = StoredCopy("success", "", {"kept": True})
    decision = decide_after_poll(outcome, job(), 5.0, POLICY, random.Random(1), stored=stored)
    assert (decision.state, decision.outcome, decision.result_body) == (
        JobState.RESULT_STORED,
        "success",
        {"kept": True},
    )
    again = decide_after_poll(outcome, job(), 5.0, POLICY, random.Random(1))
    assert again.state is JobState.QUEUED and again.wakes == {Wake.UPLOADS}


def test_a_failed_poll_counts_a_retry_and_keeps_polling() -> None:
    outcome = PollOutcome(PollKind.RETRY, None, 502, "bad gateway")
    decision = decide_after_poll(outcome, job(), 5.0, POLICY, random.Random(1))
    assert decision.state is JobState.SUBMITTED and not decision.ended
    assert (decision.error_kind, decision.retry_stage) == ("poll", "poll")


@pytest.mark.parametrize(
    ("problem", "state", "error"),
    [
        (FileNotFoundError(2, "gone"), JobState.SKIPPED, "removed before it could be uploaded"),
        (TooLarge(5000), JobState.RESULT_STORED, "5000 bytes, over max_file_bytes = 100"),
        (PermissionError(13, "Permission denied"), JobState.RESULT_STORED, "Permission denied"),
    ],
)
def test_an_unreadable_document_is_skipped_or_failed(
    problem: OSError, state: JobState, error: str
) -> None:
    decision = decide_unreadable(problem, 100)
    assert decision.state is state and error in decision.error
    assert decision.refund_attempt == (state is JobState.RESULT_STORED)


def test_changed_or_empty_content_and_too_many_attempts_are_not_sent() -> None:
    assert decide_content(job(), "0" * 64, 10) is None
    changed = decide_content(job(), "1" * 64, 10)
    assert changed is not None and changed.state is JobState.SKIPPED
    empty = decide_content(job(), "0" * 64, 0)
    assert empty is not None and empty.error == "the file is empty"
    assert decide_before_upload(job(attempts=3), POLICY) is None
    given_up = decide_before_upload(job(attempts=4, last_error="x"), POLICY)
    assert given_up is not None and "gave up after 3 attempts; last error: x" in given_up.error
