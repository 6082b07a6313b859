"""The finisher: result files a batch at a time, and nothing marked done before its file is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import live_context

from watcher import finish as finish_module
from watcher.config import PipelineConfig
from watcher.finish import Finisher
from watcher.jobs import Decision, JobState
from watcher.runtime import Pipeline, build_pipeline
from watcher.store import Store


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    (tmp_path / "drop").mkdir()
    config = PipelineConfig.model_validate(
        {
            "name": "p",
            "watch_dir": str(tmp_path / "drop"),
            "api": {
                "url": "https://unstract.example/deployment/api/org_1/invoices/",
                "api_key": "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13",
            },
        }
    )
    built = build_pipeline(config)
    yield built
    built.backend.close()


def stored(store: Store, names: list[str]) -> None:
    for index, name in enumerate(names):
        store.enqueue("p", name, f"{index:064d}", 1, 1)
        job = store.claim_for_upload("me", {"p": 50})
        assert job is not None
        store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id=f"e-{index}"), 200)
    for polled in store.claim_due_polls("me", 50, ["p"]):
        body = {
            "status": "COMPLETED",
            "message": [{"file": polled.file_name, "status": "Success", "result": {"n": 1}}],
        }
        store.record_poll(polled, Decision(JobState.RESULT_STORED, outcome="success"), 200, body)


def test_a_folder_that_cannot_be_synced_keeps_its_results_stored(
    store: Store, pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored(store, ["a.pdf", "sub/b.pdf"])
    (tmp_path / "drop" / "sub").mkdir()
    finisher = Finisher(live_context(store, [pipeline]))
    real = finish_module.fsync_folder

    def refuse_sub(folder: Path) -> None:  # EIO from a failing disk: no other way to get it
        if folder.name == "sub":
            raise OSError(5, "Input/output error")
        real(folder)

    monkeypatch.setattr(finish_module, "fsync_folder", refuse_sub)
    assert finisher.finish_stored() == (1, 1)  # a.pdf done; sub/b.pdf not, and no crash
    states = {j.relative_path: j.state for j in store.list_jobs()}
    assert states == {"a.pdf": JobState.DONE, "sub/b.pdf": JobState.RESULT_STORED}
    monkeypatch.setattr(finish_module, "fsync_folder", real)
    assert finisher.finish_stored() == (1, 0)  # written again, then done
    assert all(j.state is JobState.DONE for j in store.list_jobs())
    assert (tmp_path / "drop" / "sub" / "b.pdf.json").exists()


def test_the_finishers_idle_read_says_when_a_stored_outcome_may_be_claimed(store: Store) -> None:
    assert store.next_result_due_in("me", ["p"]) is None  # nothing stored
    stored(store, ["a.pdf"])
    due = store.next_result_due_in("me", ["p"])
    assert due is not None and due <= 0  # free now: the claim takes it
    claimed = store.claim_stored_results("other", 10, ["p"])
    assert [job.file_name for job in claimed] == ["a.pdf"]
    leased = store.next_result_due_in("me", ["p"])  # another's lease: when it runs out
    assert leased is not None and 0 < leased <= store.lease_seconds
    assert store.claim_stored_results("me", 10, ["p"]) == []
    own = store.next_result_due_in("other", ["p"])  # our own (after a full disk): now
    assert own is not None and own <= 0
    assert store.next_result_due_in("me", ["q"]) is None  # another pipeline's


def test_a_result_that_cannot_be_written_ends_its_claim_as_such(
    store: Store, pipeline: Pipeline, tmp_path: Path
) -> None:
    stored(store, ["sub/b.pdf"])
    (tmp_path / "drop" / "sub").write_bytes(b"a file where the result folder would be")
    finisher = Finisher(live_context(store, [pipeline]))
    assert finisher.finish_stored() == (0, 1)
    # Given back, not left to the heartbeat as a claim whose answer the database lost.
    assert not store.claims_in_doubt()
    [job] = store.list_jobs()
    assert job.state is JobState.RESULT_STORED and job.lease_owner is None
    folder = tmp_path / "drop" / "sub"
    assert finisher.trouble.problems() == [f"results cannot be written: {folder}: File exists"]
    folder.unlink()
    assert finisher.finish_stored() == (1, 0)
    assert finisher.trouble.problems() == []
