"""A claim whose commit went through but whose answer was lost with the connection: no loop
holds it, so it must not be renewed, and the instance gives it back without a restart.

The lost answer is forced at a lost-answer point (watcher/crashpoints.py): a real outage hits
the window between COMMIT and its answer only now and then (test_postgres_outage.py does that).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from harness import (
    KEY_ENV,
    LLMW_KEY_ENV,
    api_key,
    deployment_url,
    live_context,
    results_under,
    running_daemon,
    wait_for,
)

from watcher import crashpoints
from watcher.config import PipelineConfig
from watcher.emulator import (
    EmulatorServer,
    LLMWhispererEmulator,
    UnstractEmulator,
    llmwhisperer_demo_emulator,
)
from watcher.emulator.llmwhisperer import llmwhisperer_url
from watcher.jobs import Decision, JobState
from watcher.reconcile import Reconciler
from watcher.runtime import build_pipeline
from watcher.store import Store, jobs
from watcher.store import writes as store_module

SHA_A = "a" * 64


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    crashpoints.disarm_lost_answers()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lease_owners(store: Store) -> list[str | None]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(jobs.c.lease_owner).order_by(jobs.c.id)).scalars())


def test_a_claim_whose_answer_was_lost_is_not_renewed_and_goes_back_unsent(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    store.enqueue("p", "b.pdf", "b" * 64, 1, 1)
    held = store.claim_for_upload("me", {"p": 5})
    crashpoints.lose_answer_at("upload_claim")
    with pytest.raises(sa.exc.OperationalError):
        store.claim_for_upload("me", {"p": 5})
    assert lease_owners(store) == ["me", "me"]  # the commit went through
    assert store.claims_in_doubt()
    assert store.renew_leases("me") == 1  # only the claim a loop holds
    assert store.release_orphans("me") == 1
    assert held is not None
    orphan = next(j for j in store.list_jobs() if j.id != held.id)
    assert orphan.state is JobState.QUEUED and orphan.attempts == 0  # nothing was sent
    assert orphan.lease_owner is None and orphan.last_error == ""
    assert store.list_jobs()[0 if held.id < orphan.id else 1].state is JobState.SUBMITTING
    assert not store.claims_in_doubt() and store.release_orphans("me") == 0


def submitted(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e-1"), 200)


def test_a_lost_answer_to_a_poll_claim_makes_the_poll_due_again(store: Store) -> None:
    submitted(store)
    crashpoints.lose_answer_at("poll_claim")
    with pytest.raises(sa.exc.OperationalError):
        store.claim_due_polls("me", 4, ["p"])
    assert store.claim_due_polls("me", 4, ["p"]) == []  # a lease ahead: nobody polls it
    assert store.renew_leases("me") == 0
    assert store.release_orphans("me") == 1
    again = store.claim_due_polls("me", 4, ["p"])
    assert [j.execution_id for j in again] == ["e-1"]


def test_a_lost_answer_to_a_fetch_goes_back_to_polling(store: Store) -> None:
    submitted(store)
    polled = store.claim_due_polls("me", 4, ["p"])[0]
    crashpoints.lose_answer_at("fetch_claim")
    assert not store.begin_fetch(polled)  # the retry meets the fence: nothing is fetched
    assert store.list_jobs()[0].state is JobState.FETCHING
    assert store.release_orphans("me") == 1
    row = store.list_jobs()[0]
    assert row.state is JobState.SUBMITTED and row.lease_owner is None
    assert [j.id for j in store.claim_due_polls("me", 4, ["p"])] == [row.id]


def test_a_claim_in_hand_is_never_taken_for_an_orphan(store: Store) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    crashpoints.lose_answer_at("upload_claim")
    with pytest.raises(sa.exc.OperationalError):
        store.claim_for_upload("me", {"p": 5})  # nothing to claim, but the doubt is raised
    assert store.release_orphans("me") == 0
    assert store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id="e"), 200)


@pytest.fixture
def execution_seconds() -> float:
    return 0.2


@pytest.fixture
def whisperer() -> LLMWhispererEmulator:
    return llmwhisperer_demo_emulator(processing_seconds=0.2)


def two_pipelines(folder: Path, server: EmulatorServer, db_url: str) -> Path:
    """An Unstract and an LLMWhisperer pipeline (only the latter fetches); a lease of 30 s, so
    a lease left to run out would outlast the test's wait."""
    tables = []
    for name, kind, url, key in (
        ("invoices", "unstract", deployment_url(server), KEY_ENV),
        ("scans", "llmwhisperer", llmwhisperer_url(server), LLMW_KEY_ENV),
    ):
        (folder / name).mkdir(parents=True, exist_ok=True)
        tables.append(f"""
[[pipelines]]
name = "{name}"
watch_dir = "{folder / name}"
settle_seconds = 0.2
[pipelines.api]
kind = "{kind}"
url = "{url}"
api_key_env = "{key}"
poll_initial_seconds = 0.1
poll_max_seconds = 0.5
connect_timeout_seconds = 5
read_timeout_seconds = 15
""")
    path = folder / "config.toml"
    daemon = '[daemon]\nupload_workers = 2\npoll_workers = 2\nlog_format = "json"\n'
    path.write_text(f'[database]\nurl = "{db_url}"\n{daemon}' + "".join(tables))
    return path


@pytest.mark.parametrize("point", ["upload_claim", "poll_claim", "fetch_claim", "result_claim"])
@pytest.mark.usefixtures("api_keys")
def test_every_document_finishes_after_a_lost_claim_answer_without_a_restart(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    whisperer: LLMWhispererEmulator,
    db_url: str,
    point: str,
) -> None:
    config = two_pipelines(tmp_path, server, db_url)
    crashpoints.lose_answer_at(point, 2)
    for index in range(4):
        (tmp_path / "invoices" / f"inv-{index}.txt").write_bytes(b"invoice %d" % index)
        (tmp_path / "scans" / f"scan-{index}.txt").write_bytes(b"page %d\n" % index)
    with running_daemon(config) as daemon:
        # Well inside the lease (30 s): a lease that is renewed, or left to run out, fails it.
        wait_for(lambda: daemon.progress().finished == 8, timeout=20, what="eight documents")
        rows = daemon.store.list_jobs()
    assert crashpoints.armed_answer_losses() == []  # the armed pass was reached
    assert {j.state for j in rows} == {JobState.DONE}
    assert all(j.lease_owner is None for j in rows)
    for folder in ("invoices", "scans"):
        results = results_under(tmp_path / folder)
        assert len(results) == 4 and {r["status"] for r in results.values()} == {"success"}
    # Nothing was submitted twice.
    assert emulator.stats().executions_created == 4
    assert set(emulator.stats().posts_by_sha256.values()) == {1}
    assert whisperer.stats().whispers_created == 4
    assert set(whisperer.stats().retrieves_by_hash.values()) == {1}


def test_an_accepted_uploads_id_is_kept_and_held_through_a_long_outage(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.enqueue("p", "a.pdf", SHA_A, 1, 1)
    job = store.claim_for_upload("me", {"p": 5})
    assert job is not None
    real = store.record_submit_once
    sweeps: list[int] = []

    def down_then_up(*args: Any) -> bool:  # each call stands for a whole round of retries
        if len(sweeps) < 2:
            crashpoints.lose_answer_at("poll_claim")  # a commit in doubt, as in an outage
            with pytest.raises(sa.exc.OperationalError):
                store.claim_due_polls("me", 1, ["p"])
            sweeps.append(store.release_orphans("me"))  # the heartbeat, meanwhile
            raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("server closed"))
        return real(*args)

    monkeypatch.setattr(store, "record_submit_once", down_then_up)
    monkeypatch.setattr(store_module, "OUTAGE_RETRY_SECONDS", 0.01)
    accepted = Decision(JobState.SUBMITTED, 0.0, execution_id="e-1")
    assert store.record_submit(job, accepted, 200)
    assert sweeps == [0, 0]  # the job was ours all along: never released, never resubmitted
    row = store.list_jobs()[0]
    assert row.state is JobState.SUBMITTED and row.execution_id == "e-1"


def test_a_poll_batch_cut_short_by_an_error_leaves_no_claim_held(
    tmp_path: Path, store: Store, server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "drop").mkdir()
    config = PipelineConfig.model_validate(
        {
            "name": "p",
            "watch_dir": str(tmp_path / "drop"),
            "api": {"url": deployment_url(server), "api_key": api_key()},
        }
    )
    pipeline = build_pipeline(config)
    for name in ("a.pdf", "b.pdf"):
        store.enqueue("p", name, sha256_hex(name), 1, 1)
        job = store.claim_for_upload("me", {"p": 5})
        assert job is not None
        store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id=name), 200)

    def down(*args: Any, **kwargs: Any) -> bool:
        raise sa.exc.OperationalError("UPDATE jobs", {}, Exception("server closed"))

    monkeypatch.setattr(store, "record_poll_once", down)
    stop = threading.Event()
    reconciler = Reconciler(live_context(store, [pipeline]))
    try:
        with pytest.raises(sa.exc.OperationalError):
            reconciler.poll_due(stop)
    finally:
        pipeline.backend.close()
    assert store.renew_leases("me") == 0  # neither the polled job nor the one after it
