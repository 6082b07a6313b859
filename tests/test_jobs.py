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
    Estimate,
    RetryPolicy,
    backoff_seconds,
    is_probe,
    next_poll_seconds,
    poll_delay_seconds,
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
    assert not can_move(JobState.DONE, JobState.SUBMITTING)
    assert can_move(JobState.DONE, JobState.RESULT_STORED)  # its content came back
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


def test_a_gateway_page_to_an_upload_begins_the_outage_and_counts_that_upload() -> None:
    """The request went out: the document may be what broke the server, so it fails after
    max_attempts such uploads (each waits its backoff; the outage holds the others back)."""
    page = SubmitOutcome(SubmitKind.UNREACHABLE, None, 502, "the API's gateway answered: 502")
    again = decide_after_submit(page, 1, POLICY, rng())
    assert again.state is JobState.QUEUED and not again.refund_attempt
    assert again.pipeline_change is PipelineChange.OUTAGE and again.delay_seconds >= 1.0
    last = decide_after_submit(page, POLICY.max_attempts, POLICY, rng())
    assert last.state is JobState.RESULT_STORED and last.outcome == "failed"
    assert "gave up after 3 attempts" in last.error
    assert last.pipeline_change is PipelineChange.OUTAGE and Wake.PROBE in last.wakes


@pytest.mark.parametrize("attempts", [1, POLICY.max_attempts, POLICY.max_attempts + 3])
def test_an_unreachable_api_is_the_pipelines_outage_not_the_documents_fault(attempts: int) -> None:
    outcome = SubmitOutcome(SubmitKind.UNREACHABLE, None, None, "connection refused")
    decision = decide_after_submit(outcome, attempts, POLICY, rng())
    assert decision.state is JobState.QUEUED and decision.outcome is None
    assert decision.refund_attempt  # however many attempts it had, this one is not counted
    assert decision.pipeline_change is PipelineChange.OUTAGE
    assert decision.pause_reason == "connection refused"
    assert Wake.PROBE in decision.wakes
    assert not decision.logs  # the pipeline says it once, not each document


def test_a_poll_that_cannot_reach_the_api_waits_for_the_outage_to_end() -> None:
    outcome = PollOutcome(PollKind.UNREACHABLE, None, 503, "the API's gateway answered: HTTP 503")
    long_ago = POLICY.execution_deadline_seconds + 1  # even past the deadline: not a verdict
    decision = decide_after_poll(outcome, job(state=JobState.SUBMITTED), long_ago, POLICY, rng())
    assert decision.state is JobState.SUBMITTED and decision.outcome is None
    assert decision.pipeline_change is PipelineChange.OUTAGE
    assert not decision.ended  # nothing is learnt of the execution's time


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


PROBE_ID = next(f"e{n}" for n in range(1000) if is_probe(f"e{n}"))
PLAIN_ID = next(f"e{n}" for n in range(1000) if not is_probe(f"e{n}"))


def test_with_a_typical_duration_the_first_poll_comes_just_after_it() -> None:
    policy = RetryPolicy(poll_initial_seconds=0.25, poll_max_seconds=30.0)
    schedule, elapsed = [], 0.0
    while elapsed < 6.0:  # a 5 s execution, typical duration 5 s
        elapsed += next_poll_seconds(elapsed, len(schedule), 5.0, policy)
        schedule.append(round(elapsed, 2))
    # Done by the first poll: 1 poll, 0.1 s late; then steps of 5 % of it, half again as long
    # each time (a run a little past the estimate is found soon, a long one in few polls).
    assert schedule == [5.1, 5.35, 5.72, 6.29]
    # Steps count from the first poll's time, not from the polls made before an estimate.
    assert next_poll_seconds(5.1, 6, 5.0, policy) == pytest.approx(0.25)
    assert next_poll_seconds(5.35, 7, 5.0, policy) == pytest.approx(0.375)
    assert next_poll_seconds(0.0, 0, 5.0, policy, probe=0.9) == 4.5  # a probe asks early,
    assert next_poll_seconds(4.5, 1, 5.0, policy) == pytest.approx(0.6)  # then as the others
    assert next_poll_seconds(0.0, 0, None, policy) == 0.25  # no estimate yet
    assert next_poll_seconds(0.0, 0, 0.01, policy) == 0.02  # instant executions: 20 ms
    assert next_poll_seconds(100.0, 40, 5.0, policy) == 30.0  # a straggler: back to the cap
    assert next_poll_seconds(0.0, 0, 3600.0, policy) == 3672.0  # hour-long ones: at the hour,
    assert next_poll_seconds(3700.0, 1, 3600.0, policy) == 30.0  # then poll_max_seconds apart


def _simulate(
    durations: list[float], lag: float, side_by_side: int = 1
) -> tuple[list[list[int]], list[list[float]]]:
    """Rounds of `side_by_side` executions submitted together, each round's of the given
    duration, polled `lag` seconds late, the estimate learnt as the pipeline learns it (one
    execution in PROBE_EVERY a probe, by its id): polls and delays per round."""
    policy = RetryPolicy(poll_initial_seconds=0.25, poll_max_seconds=30.0)
    estimate, now = Estimate(), 0.0
    polls, delays = [], []
    for number, duration in enumerate(durations):
        seen = []
        for execution_id in (f"e{number}-{index}" for index in range(side_by_side)):
            probe = estimate.probe_for(execution_id)
            elapsed, previous, count = 0.0, None, 0
            while True:
                elapsed += next_poll_seconds(elapsed, count, estimate.seconds, policy, probe)
                elapsed += lag
                count += 1
                if elapsed >= duration:
                    break
                previous = elapsed
            seen.append((execution_id, elapsed, previous, count))
        now += max(elapsed for _, elapsed, _, _ in seen)
        for execution_id, elapsed, previous, _ in seen:
            estimate = estimate.after(elapsed, previous, is_probe(execution_id), now)
        polls.append([count for *_, count in seen])
        delays.append([elapsed - duration for _, elapsed, _, _ in seen])
    return polls, delays


def _flat(rounds: list[list[Any]]) -> list[Any]:
    return [value for one in rounds for value in one]


def test_a_steady_service_settles_at_one_poll_mostly_two_at_most_and_a_short_delay() -> None:
    for side_by_side in (1, 20):
        polls, delays = _simulate([5.0] * 200, lag=0.03, side_by_side=side_by_side)
        settled = _flat(polls[20:])
        assert max(settled) <= 2  # a probe that finds it running: one poll more
        assert sum(settled) / len(settled) <= 1.25  # most: one poll
        assert max(_flat(delays[20:])) < 0.4  # a tenth of 5 s or less, however long it runs
        assert max(_flat(delays[-20:])) < 0.4  # no creep by the lag over 200 rounds


def test_instant_executions_are_polled_at_once() -> None:
    polls, delays = _simulate([0.005] * 100, lag=0.01)
    assert _flat(polls[-20:]) == [1] * 20
    assert max(_flat(delays[-20:])) < 0.15


def test_the_reconcilers_own_lateness_does_not_hold_instant_executions_back() -> None:
    polls, delays = _simulate([0.005] * 100, lag=0.03)  # a busy reconciler, 30 ms late
    assert _flat(polls[-20:]) == [1] * 20
    assert max(_flat(delays[-20:])) < 0.1  # probes step down whatever the lag


def test_a_slower_or_faster_service_is_followed() -> None:
    for side_by_side in (1, 20):
        durations = [2.0] * 50 + [8.0] * 50 + [1.0] * 150
        polls, delays = _simulate(durations, 0.03, side_by_side)
        assert max(_flat(delays[90:100])) < 1.0  # caught up with the slowdown
        assert max(_flat(delays[-10:])) < 0.3  # and with the speed-up
        assert sum(_flat(polls[-10:])) / len(_flat(polls[-10:])) <= 1.5


def test_a_faster_service_is_followed_within_a_few_probes() -> None:
    polls, delays = _simulate([5.0] * 30 + [2.5] * 60, lag=0.03, side_by_side=20)
    assert max(_flat(delays[40:])) < 0.3  # 10 rounds of 20 later: 2.5 s is the estimate
    assert max(_flat(polls[40:])) <= 2


def test_executions_ending_side_by_side_do_not_drag_the_estimate_down() -> None:
    polls, _ = _simulate([5.0] * 10, lag=0.03, side_by_side=20)
    assert max(polls[1]) <= 3  # after the first, known roughly: a probe, a step early, one late
    assert max(_flat(polls[2:])) <= 2


def test_the_estimate_takes_what_is_known() -> None:
    first = Estimate()
    assert first.after(6.0, 4.0, False, 0.0).seconds == 4.5  # in between, nearer its start
    instant = first.after(0.25, None, False, 0.0)  # ended by its first poll: at most 0.25 s
    assert instant == Estimate(0.25, 0.5, eager=True)  # every next one probes, far below
    assert instant.probe_for(PLAIN_ID) == 0.5
    assert first.probe_for(PROBE_ID) is None  # nothing to probe yet
    known = Estimate(5.0)
    assert known.probe_for(PROBE_ID) == 0.9
    assert known.probe_for(PLAIN_ID) is None
    assert known.after(6.0, 5.5, False, 0.0).seconds == 5.0 + 0.2 * 0.75  # ran past: averaged
    assert known.after(5.2, None, False, 0.0) == known  # a poll after it says nothing new
    found_ended = known.after(4.6, None, True, 10.0)  # the probe at 4.5 found it ended
    assert found_ended.seconds == 4.5
    assert found_ended.probe_fraction == pytest.approx(0.8)  # next probe: twice as far below
    assert found_ended.probe_for(PLAIN_ID) == found_ended.probe_fraction  # and every one probes
    found_running = known.after(5.2, 4.6, True, 10.0)  # the probe saw it running
    assert found_running.seconds == 5.0
    assert found_running.probe_fraction == pytest.approx(0.95)  # next probe: closer
    assert not found_running.after(5.2, 4.8, True, 20.0).eager  # one in PROBE_EVERY again
    assert Estimate(5.0, 0.97).after(5.2, 4.9, True, 10.0).probe_fraction == 0.97
    assert Estimate(5.0, 0.5).after(2.6, None, True, 10.0) == Estimate(2.5, 0.5, 10.0, True)
    side_by_side = Estimate(4.5, 0.8, probed_at=10.0)  # a probe that ended with the last one
    assert side_by_side.after(4.6, None, True, 12.0) == side_by_side


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
