"""Several documents per execution: which go together (pure, then claimed from the real store
on both databases), and what one execution's answer means for each of its documents."""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import replace
from typing import Any

import pytest

from watcher import commands
from watcher.backend import PollKind, PollOutcome, SubmitKind, SubmitOutcome
from watcher.jobs import Decision, Job, JobState, decide_after_poll
from watcher.packs import decide_after_pack_submit, file_rounds, pick_pack, should_pack
from watcher.schedule import RetryPolicy
from watcher.store import Store
from watcher.unstract import UnstractResults

POLICY = RetryPolicy(max_attempts=3)


def sha(index: int) -> str:
    return f"{index:064x}"


def job(id: int, path: str, digest: int, **changes: Any) -> Job:
    base = Job(
        id=id,
        pipeline="p",
        relative_path=path,
        sha256=sha(digest),
        size=1,
        mtime_ns=1,
        state=JobState.SUBMITTING,
        attempts=1,
        execution_id=None,
        poll_count=0,
        outcome=None,
        result_body=None,
        last_http_status=None,
        last_error="",
        lease_owner="me",
        created_at=0.0,
        submitted_at=0.0,
        updated_at=0.0,
    )
    return replace(base, **changes)


# -- which documents go together (pure) ----------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "free", "size", "packs"),
    [(1, 20, 4, False), (20, 20, 4, False), (21, 20, 4, True), (5, 0, 4, True), (50, 1, 1, False)],
)
def test_only_a_backlog_is_packed(waiting: int, free: int, size: int, packs: bool) -> None:
    assert should_pack(waiting, free, size) is packs


def test_a_pack_never_holds_two_names_or_two_contents() -> None:
    first = job(1, "a/x.pdf", 1)
    candidates = [
        job(2, "b/x.pdf", 2),  # same file name in another folder: the server joins them
        job(3, "b/y.pdf", 1),  # same content: the server skips the second
        job(4, "b/y.pdf", 4),
        job(5, "c/y.pdf", 5),  # a second y.pdf
        job(6, "c/z.pdf", 6, alone=True),  # to be sent alone
        job(7, "c/w.pdf", 7),
        job(8, "c/v.pdf", 8),
    ]
    chosen = pick_pack(first, candidates, 4)
    assert [j.id for j in chosen] == [4, 7, 8]
    assert pick_pack(first, candidates, 2) == [candidates[2]]
    assert pick_pack(first, candidates[:2], 4) == []


def test_execution_time_counts_rounds_of_four_files() -> None:
    assert [file_rounds(n) for n in (1, 4, 5, 8, 32)] == [1, 1, 2, 2, 8]


def test_a_refused_packed_upload_sends_each_document_again_alone() -> None:
    pack = [job(1, "a.pdf", 1), job(2, "b.pdf", 2)]
    refused = SubmitOutcome(SubmitKind.DOCUMENT_FAILED, http_status=400, error="bad")
    decided = decide_after_pack_submit(refused, pack, POLICY, random.Random(1))
    assert [(d.state, d.alone) for d in decided] == [(JobState.QUEUED, True)] * 2
    accepted = SubmitOutcome(SubmitKind.ACCEPTED, "e-1", 200)
    decided = decide_after_pack_submit(accepted, pack, POLICY, random.Random(1))
    assert [d.execution_id for d in decided] == ["e-1", "e-1"]
    assert decided[0].pipeline_change is not None and decided[1].pipeline_change is None


# -- what one answer means for each document (pure) ----------------------------------------


def item(name: str, error: str | None = None) -> dict[str, Any]:
    status = "Failed" if error else "Success"
    result = None if error else {"output": {"name": name}}
    return {"file": name, "status": status, "error": error, "result": result, "metadata": {}}


def answer(status: str, items: list[dict[str, Any]] | None, http: int = 200) -> PollOutcome:
    kind = PollKind.COMPLETED if status == "COMPLETED" else PollKind.FAILED
    return PollOutcome(kind, status, http, "", {"status": status, "message": items})


def outcomes(polled: PollOutcome, names: list[str]) -> list[tuple[PollKind, str]]:
    found = UnstractResults().file_outcomes(polled, names, shared=True)
    return [(o.kind, o.error) for o in found]


def test_a_completed_execution_gives_successes_and_errors_side_by_side() -> None:
    polled = answer("COMPLETED", [item("a.pdf"), item("b.pdf", "unreadable scan")])
    assert outcomes(polled, ["a.pdf", "b.pdf", "c.pdf"]) == [
        (PollKind.COMPLETED, ""),
        (PollKind.FAILED, "unreadable scan"),
        (PollKind.UNANSWERED, "the execution ended (COMPLETED) without an answer for 'c.pdf'"),
    ]


def test_a_lone_item_is_never_taken_for_another_document_of_a_shared_execution() -> None:
    polled = answer("COMPLETED", [item("a.pdf")])
    assert [k for k, _ in outcomes(polled, ["b.pdf"])] == [PollKind.UNANSWERED]


@pytest.mark.parametrize(
    "polled",
    [
        answer("STOPPED", None, 422),
        answer("ERROR", None, 422),
        answer("ERROR", [item("a.pdf", "TOOL_IMAGE_NOT_FOUND: tool")], 500),
    ],
)
def test_an_execution_that_failed_as_a_whole_answers_no_document(polled: PollOutcome) -> None:
    assert [k for k, _ in outcomes(polled, ["a.pdf", "b.pdf"])] == [PollKind.UNANSWERED] * 2


def test_unanswered_documents_go_again_alone_within_max_attempts() -> None:
    unanswered = PollOutcome(PollKind.UNANSWERED, "STOPPED", 422, "no item")
    again = decide_after_poll(unanswered, job(1, "a.pdf", 1), 1.0, POLICY, random.Random(1))
    assert (again.state, again.alone, again.ended) == (JobState.QUEUED, True, True)
    last = job(1, "a.pdf", 1, attempts=POLICY.max_attempts)
    given_up = decide_after_poll(unanswered, last, 1.0, POLICY, random.Random(1))
    assert (given_up.state, given_up.outcome) == (JobState.RESULT_STORED, "failed")
    assert "gave up after 3 attempts" in given_up.error


# -- packed claims in the real store (SQLite and PostgreSQL) -------------------------------


def enqueue(store: Store, paths: list[str]) -> None:
    for index, path in enumerate(paths):
        store.enqueue("p", path, sha(index), 1, 1)


def test_documents_are_packed_only_while_more_wait_than_slots_are_free(store: Store) -> None:
    enqueue(store, [f"{i}.pdf" for i in range(3)])
    claims = [store.claim_execution_for_upload("me", {"p": 5}, {"p": 4}) for _ in range(4)]
    assert [len(c) for c in claims] == [1, 1, 1, 0]
    assert all(c[0].pack_id is None for c in claims if c)


def test_a_backlog_is_claimed_in_packs_that_count_as_one_execution(store: Store) -> None:
    enqueue(store, [f"{i}.pdf" for i in range(10)])
    first = store.claim_execution_for_upload("me", {"p": 2}, {"p": 4})
    second = store.claim_execution_for_upload("me", {"p": 2}, {"p": 4})
    assert [len(first), len(second)] == [4, 4]
    assert {j.pack_id for j in first} == {first[0].id}
    assert all(j.state is JobState.SUBMITTING and j.attempts == 1 for j in first + second)
    assert store.claim_execution_for_upload("me", {"p": 2}, {"p": 4}) == []  # two executions
    accepted = Decision(JobState.SUBMITTED, execution_id="e-1")
    assert store.record_execution_submit([(j, accepted) for j in first], 200) == [True] * 4
    rows = {j.id: j for j in store.list_jobs()}
    assert {rows[j.id].execution_id for j in first} == {"e-1"}
    assert store.claim_execution_for_upload("me", {"p": 2}, {"p": 4}) == []  # still two
    polls = store.claim_due_polls("poller", 1, ["p"])  # one execution: all of its jobs
    assert sorted(j.id for j in polls) == sorted(j.id for j in first)


def test_packs_keep_same_names_and_same_contents_apart(store: Store) -> None:
    paths = ["a/x.pdf", "b/x.pdf", "c/x.pdf", "a/y.pdf", "b/y.pdf", "a/z.pdf"]
    enqueue(store, paths)
    store.enqueue("p", "a/copy.pdf", sha(0), 1, 1)  # the content of a/x.pdf
    packs = []
    while claim := store.claim_execution_for_upload("me", {"p": 1}, {"p": 4}):
        packs.append(claim)
        gone = Decision(JobState.QUEUED, delay_seconds=3600)  # out of the way
        store.record_execution_submit([(j, gone) for j in claim], None)
    for pack in packs:
        assert len({j.upload_name for j in pack}) == len(pack)
        assert len({j.sha256 for j in pack}) == len(pack)
    assert sorted(j.relative_path for p in packs for j in p) == sorted([*paths, "a/copy.pdf"])
    assert [len(p) for p in packs] == [3, 3, 1]  # x y z; x y copy; x


def test_a_document_to_be_sent_alone_is_never_packed(store: Store) -> None:
    enqueue(store, [f"{i}.pdf" for i in range(6)])
    claim = store.claim_execution_for_upload("me", {"p": 1}, {"p": 4})
    alone = Decision(JobState.QUEUED, alone=True)
    store.record_execution_submit([(j, alone) for j in claim], None)
    sizes = []
    while claim := store.claim_execution_for_upload("me", {"p": 1}, {"p": 4}):
        sizes.append((len(claim), claim[0].alone))
        store.record_execution_submit([(j, Decision(JobState.QUEUED, 3600)) for j in claim], None)
    assert sorted(sizes) == [(1, True)] * 4 + [(2, False)]


def test_status_jobs_show_and_report_say_which_documents_shared_an_execution(
    store: Store,
) -> None:
    enqueue(store, [f"{i}.pdf" for i in range(5)])
    pack = store.claim_execution_for_upload("me", {"p": 1}, {"p": 4})
    accepted = Decision(JobState.SUBMITTED, execution_id="e-1")
    store.record_execution_submit([(j, accepted) for j in pack], 200)
    status = json.loads(commands.status(store, ["p"], as_json=True))[0]
    assert (status["in_flight"], status["in_flight_executions"]) == (4, 1)
    assert "4 in 1 executions" in commands.status(store, ["p"], as_json=False)
    shown = json.loads(commands.jobs_show(store, pack[0].id, as_json=True) or "")
    assert [j["path"] for j in shown["shares_execution_with"]] == ["1.pdf", "2.pdf", "3.pdf"]
    text = commands.jobs_show(store, pack[1].id, as_json=False) or ""
    assert "shares execution: 1 0.pdf, 3 2.pdf, 4 3.pdf" in text
    rows = list(csv.DictReader(io.StringIO(commands.report(store, {}, "csv"))))
    assert [r["documents_in_execution"] for r in rows] == ["4", "4", "4", "4", ""]
    assert {r["execution_id"] for r in rows[:4]} == {"e-1"}
