"""The job table's contract, run on a real SQLite file and on the real PostgreSQL."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from watcher.jobs import Decision, JobState
from watcher.store import Store, jobs

SHA_A = "a" * 64
SHA_B = "b" * 64


def test_enqueue_is_idempotent_per_path_and_content(store: Store) -> None:
    first = store.enqueue("p", "in/a.pdf", SHA_A, 10, 1)
    assert first is not None
    assert store.enqueue("p", "in/a.pdf", SHA_A, 10, 2) is None  # same content again
    assert store.enqueue("p", "in/a.pdf", SHA_B, 11, 3) is not None  # changed content
    assert store.enqueue("p", "other/a.pdf", SHA_A, 10, 1) is not None  # another path
    known = store.known_files("p")
    assert known["in/a.pdf"].sha256 == SHA_B
    assert len(store.list_jobs("p")) == 3


def test_repeat_with_same_content_refreshes_the_stat_for_cheap_rescans(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 10, 1)
    store.enqueue("p", "a.pdf", SHA_A, 10, 99)
    assert store.known_files("p")["a.pdf"].mtime_ns == 99


def test_claim_respects_the_in_flight_limit_per_pipeline(store: Store) -> None:
    for index in range(3):
        store.enqueue("p", f"{index}.pdf", SHA_A, 1, 1)
    store.enqueue("q", "x.pdf", SHA_A, 1, 1)
    claimed = [store.claim_for_upload("me", {"p": 2}) for _ in range(3)]
    assert [j is not None for j in claimed] == [True, True, False]
    assert all(j.state is JobState.SUBMITTING and j.attempts == 1 for j in claimed if j)
    other = store.claim_for_upload("me", {"p": 2, "q": 1})
    assert other is not None and other.pipeline == "q"


def test_concurrent_claims_never_hand_out_a_job_twice(store: Store) -> None:
    for index in range(40):
        store.enqueue("p", f"{index}.pdf", SHA_A, 1, 1)
    taken: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        while job := store.claim_for_upload(threading.current_thread().name, {"p": 100}):
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 40


def test_execution_id_is_recorded_and_polls_come_due(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    assert store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-1"), 200)
    due = store.due_polls(10, ["p"])
    assert [(j.execution_id, j.state) for j in due] == [("e-1", JobState.SUBMITTED)]
    # The fence: the same claim cannot be applied twice.
    assert not store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-2"), 200)


def test_terminal_body_is_stored_with_the_outcome(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-1"), 200)
    polled = store.due_polls(10, ["p"])[0]
    body = {"status": "COMPLETED", "message": [{"file": "a.pdf", "status": "Success"}]}
    decision = Decision(JobState.RESULT_STORED, outcome="success")
    assert store.record_poll(polled, decision, 200, body)
    stored = store.claim_stored_results(10, ["p"])
    assert stored[0].result_body == body and stored[0].outcome == "success"
    assert store.mark_finished(stored[0])
    assert store.list_jobs("p")[0].state is JobState.DONE
    assert store.unfinished_count(["p"]) == 0


def test_a_retry_waits_for_its_time(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    store.record_submit(job, Decision(JobState.QUEUED, 3600.0, "503"), 503)
    assert store.claim_for_upload("me", {"p": 5}) is None
    with store.engine.begin() as conn:  # move time instead of sleeping
        conn.execute(sa.update(jobs).values(next_attempt_at=jobs.c.next_attempt_at - 3601))
    again = store.claim_for_upload("me", {"p": 5})
    assert again is not None and again.attempts == 2


def test_interrupted_uploads_are_released(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    assert store.claim_for_upload("dead-instance", {"p": 5}) is not None
    assert store.release_stale_claims() == 0  # the lease is still valid
    assert store.release_stale_claims(everything=True) == 1
    job = store.list_jobs("p")[0]
    assert job.state is JobState.QUEUED and "outcome unknown" in job.last_error


def test_upgrade_is_repeatable(store: Store) -> None:
    store.upgrade()
    assert store.list_jobs() == []
