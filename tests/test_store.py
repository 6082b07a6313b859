"""The job table's contract, run on a real SQLite file and on the real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from watcher.jobs import Decision, JobState
from watcher.store import Store, StoreError, jobs
from watcher.store import writes as store_module
from watcher.store.schema import SCHEMA_HEAD

SHA_A = "a" * 64
SHA_B = "b" * 64


def test_enqueue_is_idempotent_per_path_and_content(store: Store) -> None:
    first = store.enqueue("p", "in/a.pdf", SHA_A, 10, 1)
    assert first is not None
    assert store.enqueue("p", "in/a.pdf", SHA_A, 10, 2) is None  # same content again
    assert store.enqueue("p", "in/a.pdf", SHA_B, 11, 3) is not None  # changed content
    assert store.enqueue("p", "other/a.pdf", SHA_A, 10, 1) is not None  # another path
    known = store.known_versions("p", ["in/a.pdf"])
    assert known["in/a.pdf"].sha256 == SHA_B
    assert len(store.list_jobs("p")) == 3


def test_repeat_with_same_content_refreshes_the_stat_for_cheap_rescans(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 10, 1)
    store.enqueue("p", "a.pdf", SHA_A, 10, 99)
    assert store.known_versions("p", ["a.pdf"])["a.pdf"].mtime_ns == 99


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
    due = store.claim_due_polls("me", 10, ["p"])
    assert [(j.execution_id, j.state) for j in due] == [("e-1", JobState.SUBMITTED)]
    # The fence: the same claim cannot be applied twice.
    assert not store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-2"), 200)


def test_terminal_body_is_stored_with_the_outcome(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-1"), 200)
    polled = store.claim_due_polls("me", 10, ["p"])[0]
    body = {"status": "COMPLETED", "message": [{"file": "a.pdf", "status": "Success"}]}
    decision = Decision(JobState.RESULT_STORED, outcome="success")
    assert store.record_poll(polled, decision, 200, body)
    stored = store.claim_stored_results("me", 10, ["p"])
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
    assert store.release_claims() == (0, 0)  # the lease is still valid
    assert store.release_claims(owner="dead-instance") == (1, 0)  # its own earlier life
    job = store.list_jobs("p")[0]
    assert job.state is JobState.QUEUED and "outcome unknown" in job.last_error


def test_upgrade_is_repeatable(store: Store) -> None:
    store.upgrade()
    assert store.list_jobs() == []


def test_the_schema_head_is_the_newest_migration(store: Store) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "migrations")
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_HEAD
    assert store.schema_revision() == SCHEMA_HEAD


def test_a_start_at_the_newest_schema_does_not_load_alembic(store: Store, db_url: str) -> None:
    # alembic stays imported for the daemon's life once loaded: about 8 MiB, and start-up time.
    check = (
        "import sys; from watcher.store import Store; store = Store(sys.argv[1]); "
        "store.upgrade(); print('alembic' in sys.modules)"
    )
    ran = subprocess.run([sys.executable, "-c", check, db_url], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "False"


def submitted(store: Store, name: str = "a.pdf", execution_id: str = "e-1") -> None:
    store.enqueue("p", name, SHA_A, 1, 1)
    job = store.claim_for_upload("uploader", {"p": 50})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id=execution_id), 200)


def test_each_due_execution_is_polled_by_one_instance_at_a_time(store: Store) -> None:
    for index in range(6):
        submitted(store, f"{index}.pdf", f"e-{index}")
    first = store.claim_due_polls("instance-a", 4, ["p"])
    second = store.claim_due_polls("instance-b", 10, ["p"])
    assert len(first) == 4 and len(second) == 2
    assert not {j.id for j in first} & {j.id for j in second}
    assert store.claim_due_polls("instance-c", 10, ["p"]) == []  # all held by a lease


def test_a_dead_pollers_executions_are_taken_over_after_its_lease(store: Store) -> None:
    submitted(store)
    dead = store.claim_due_polls("dead", 10, ["p"])[0]
    with store.engine.begin() as conn:  # the lease runs out: move time instead of sleeping
        conn.execute(sa.update(jobs).values(next_poll_at=jobs.c.next_poll_at - 10_000))
    alive = store.claim_due_polls("alive", 10, ["p"])[0]
    body = {"status": "COMPLETED", "message": [{"file": "a.pdf", "status": "Success"}]}
    # The dead instance wakes up with the result: its write is fenced off, but the result it
    # read once is kept by execution id for the instance that owns the job now.
    stored = Decision(JobState.RESULT_STORED, outcome="success")
    assert not store.record_poll(dead, stored, 200, body)
    assert store.stored_result("e-1") == ("success", "", body)
    assert store.record_poll(alive, Decision(JobState.SUBMITTED, 1.0), 406)
    assert store.list_jobs()[0].state is JobState.SUBMITTED


def test_stored_results_are_written_by_one_instance(store: Store) -> None:
    submitted(store)
    polled = store.claim_due_polls("me", 10, ["p"])[0]
    store.record_poll(polled, Decision(JobState.RESULT_STORED, outcome="success"), 200, {"x": 1})
    mine = store.claim_stored_results("writer-a", 10, ["p"])
    assert len(mine) == 1 and store.claim_stored_results("writer-b", 10, ["p"]) == []
    assert store.mark_finished(mine[0])


def test_two_instances_discovering_the_same_file_make_one_job(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(2)]
    stores[0].upgrade()
    ids: list[int | None] = []
    threads = [
        threading.Thread(target=lambda s=s: ids.append(s.enqueue("p", "a.pdf", SHA_A, 1, 1)))
        for s in stores
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([i for i in ids if i is not None]) == 1
    assert len(stores[0].list_jobs()) == 1
    for opened in stores:
        opened.close()


def test_a_lone_restart_releases_every_claim(store: Store) -> None:
    submitted(store, "polled.pdf", "e-1")
    submitted(store, "written.pdf", "e-2")
    store.enqueue("p", "held.pdf", SHA_A, 1, 1)
    assert store.claim_for_upload("old", {"p": 50}) is not None
    polled, written = store.claim_due_polls("old", 10, ["p"])
    store.record_poll(written, Decision(JobState.RESULT_STORED, outcome="success"), 200, {"x": 1})
    assert store.claim_stored_results("old", 10, ["p"])
    assert store.release_claims(everything=True, hold=["p"]) == (1, 0)
    assert store.claim_due_polls("new", 10, ["p"])[0].id == polled.id  # due again at once
    assert [j.relative_path for j in store.claim_stored_results("new", 10, ["p"])] == [
        "written.pdf"
    ]
    held = next(j for j in store.list_jobs() if j.relative_path == "held.pdf")
    assert held.state is JobState.HELD  # the pipeline holds interrupted uploads


def test_a_skipped_version_is_queued_again_when_it_comes_back(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None and store.skip(job, "the file was removed before it could be uploaded")
    assert store.claim_for_upload("me", {"p": 5}) is None
    assert store.enqueue("p", "a.pdf", SHA_A, 1, 2) == job.id  # the same content is back
    again = store.claim_for_upload("me", {"p": 5})
    assert again is not None and again.id == job.id and again.last_error == ""
    assert store.enqueue("p", "a.pdf", SHA_A, 1, 3) is None  # queued or on its way: known


def test_the_upload_claim_uses_the_lease_set_after_construction(store: Store) -> None:
    store.set_lease_seconds(5000.0)  # what the daemon sets from the HTTP timeouts
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    assert store.claim_for_upload("me", {"p": 5}) is not None
    with store.engine.connect() as conn:
        lease_until = conn.execute(sa.select(jobs.c.lease_until)).scalar_one()
    assert 4990 < lease_until - store.now() <= 5000


def test_execution_ids_and_owners_of_any_length_are_kept(store: Store) -> None:
    owner = "host-" + "x" * 300
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload(owner, {"p": 5})
    assert job is not None
    long_id = "whisper-" + "h" * 500
    assert store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id=long_id), 202)
    polled = store.claim_due_polls(owner, 10, ["p"])[0]
    assert polled.execution_id == long_id
    assert store.record_poll(polled, Decision(JobState.RESULT_STORED, outcome="success"), 200, {})
    assert store.stored_result(long_id) == ("success", "", {})


def test_a_result_in_hand_is_stored_after_a_database_outage(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted(store)
    polled = store.claim_due_polls("me", 10, ["p"])[0]
    real = store.record_poll_once
    outage = iter([True, True, False])  # the database is down for two tries (a fault we
    # cannot produce on the real server without stopping it for every other test)

    def flaky(*args: Any) -> bool:
        if next(outage):
            raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("server closed"))
        return real(*args)

    monkeypatch.setattr(store, "record_poll_once", flaky)
    monkeypatch.setattr(store_module, "OUTAGE_RETRY_SECONDS", 0.01)
    body = {"status": "COMPLETED", "message": [{"file": "a.pdf", "status": "Success"}]}
    assert store.record_poll(polled, Decision(JobState.RESULT_STORED, outcome="success"), 200, body)
    assert store.list_jobs()[0].result_body == body


def test_a_poll_without_a_result_gives_up_on_an_outage(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted(store)
    polled = store.claim_due_polls("me", 10, ["p"])[0]

    def down(*args: Any) -> bool:
        raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("server closed"))

    monkeypatch.setattr(store, "record_poll_once", down)
    with pytest.raises(sa.exc.OperationalError):  # the loop waits it out (daemon._supervised)
        store.record_poll(polled, Decision(JobState.SUBMITTED, 1.0), 422)


@pytest.mark.postgres
def test_one_instance_id_runs_once_on_postgresql(postgres_url: str) -> None:
    first, second, other = (Store(postgres_url) for _ in range(3))
    first.upgrade()
    first.lock_for_daemon("host-a")
    with pytest.raises(StoreError, match="instance_id 'host-a'"):
        second.lock_for_daemon("host-a")
    other.lock_for_daemon("host-b")  # another id may run beside it
    first.close()
    second.lock_for_daemon("host-a")  # free once the first instance is gone
    for opened in (second, other):
        opened.close()


def test_sqlite_serves_one_daemon_per_file(sqlite_url: str) -> None:
    first, second = Store(sqlite_url), Store(sqlite_url)
    first.lock_for_daemon("a")
    with pytest.raises(StoreError, match="another unstract-watcher daemon"):
        second.lock_for_daemon("b")
    first.close()
    second.lock_for_daemon("b")
    second.close()


def test_an_accepted_upload_is_recorded_with_the_next_claim(store: Store) -> None:
    for name in ("a.pdf", "b.pdf", "c.pdf"):
        store.enqueue("p", name, SHA_A, 1, 1)
    first = store.claim_for_upload("me", {"p": 2})
    assert first is not None
    accepted = Decision(JobState.SUBMITTED, 0.0, execution_id="e-1")
    recorded, second = store.record_submit_and_claim(first, accepted, 200, "me", {"p": 2})
    assert recorded and second is not None and second.state is JobState.SUBMITTING
    assert store.list_jobs()[0].execution_id == "e-1"
    # The limit counts the one just recorded: with two in flight there is no third claim.
    recorded, third = store.record_submit_and_claim(
        second, Decision(JobState.SUBMITTED, 0.0, execution_id="e-2"), 200, "me", {"p": 2}
    )
    assert recorded and third is None
    # A lost claim records nothing, and still hands out no job beyond the limit.
    assert store.record_submit_and_claim(first, accepted, 200, "me", {"p": 2}) == (False, None)


def test_a_write_waits_out_a_lock_held_past_busy_timeout(sqlite_url: str) -> None:
    import sqlite3

    store = Store(sqlite_url, busy_timeout_seconds=0.1)
    store.upgrade()
    other = sqlite3.connect(
        sa.engine.make_url(sqlite_url).database or "", isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 session holding the write lock
    releaser = threading.Timer(1.0, lambda: other.execute("COMMIT"))
    releaser.start()
    try:
        assert store.enqueue("p", "a.pdf", SHA_A, 1, 1) is not None  # retried, not raised
    finally:
        releaser.join()
        other.close()
        store.close()


def test_the_clock_carries_on_while_the_database_is_away(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store.clock()

    def away() -> float:
        raise sa.exc.OperationalError("SELECT now", {}, Exception("server closed"))

    monkeypatch.setattr(store, "now", away)
    store.clock.expire()  # time to read it again
    assert before <= store.clock() < before + 5  # the last offset, carried by ours
    fresh = Store(store.url)
    monkeypatch.setattr(fresh, "now", away)
    with pytest.raises(sa.exc.OperationalError):  # never read: nothing to carry on
        fresh.clock()
    fresh.close()


def test_a_poll_given_back_is_due_at_once_for_another_loop(store: Store) -> None:
    submitted(store)
    taken = store.claim_due_polls("me", 10, ["p"])[0]
    assert store.claim_due_polls("other", 10, ["p"]) == []
    assert store.release_poll(taken)
    assert [j.id for j in store.claim_due_polls("other", 10, ["p"])] == [taken.id]


def test_only_this_hosts_dead_earlier_life_is_taken_for_dead() -> None:
    from watcher.store.instance_lock import is_dead_earlier_life, session_name

    ours = session_name()
    _, _, host, boot, _ = f"x {ours}".split(" ")
    dead_pid = gone_pid()  # a process that has ended
    assert is_dead_earlier_life(f"unstract-watcher {host} {boot} {dead_pid}", ours)
    assert is_dead_earlier_life(f"unstract-watcher {host} 00000000 {os.getpid()}", ours)  # rebooted
    assert not is_dead_earlier_life(f"unstract-watcher {host} {boot} {os.getpid()}", ours)  # alive
    assert not is_dead_earlier_life(
        f"unstract-watcher ffffffff {boot} {dead_pid}", ours
    )  # another host
    assert not is_dead_earlier_life("psql", ours)


def gone_pid(_: object = None) -> int:
    """The pid of a process that has ended (free, unless reused in the meantime)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.postgres
def test_a_lock_left_by_our_own_dead_process_does_not_block_the_restart(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watcher.store import instance_lock

    first, second = Store(postgres_url), Store(postgres_url)
    first.upgrade()
    dead = gone_pid()
    with monkeypatch.context() as patched:  # the first holder's session says it is `dead`
        patched.setattr(instance_lock.os, "getpid", lambda: dead)
        first.lock_for_daemon("host-a")
    second.lock_for_daemon("host-a")  # the server still has the dead session: it is ended
    assert not first.holds_instance_lock()  # the dead holder's session is gone
    assert second.holds_instance_lock()
    first.close()
    second.close()
