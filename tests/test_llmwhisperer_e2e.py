"""One daemon, two pipelines side by side: Unstract and LLMWhisperer v2, over loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import (
    KEY_ENV,
    LLMW_KEY_ENV,
    deployment_url,
    results_under,
    running_daemon,
    sha256,
    wait_for,
)

from watcher.emulator import (
    EmulatorServer,
    LLMWhispererEmulator,
    UnstractEmulator,
    llmwhisperer_demo_emulator,
)
from watcher.emulator.llmwhisperer import llmwhisperer_url
from watcher.jobs import JobState

pytestmark = pytest.mark.usefixtures("api_keys")


@pytest.fixture
def execution_seconds() -> float:
    return 0.2


@pytest.fixture(params=["current", "legacy"])
def whisperer(request: pytest.FixtureRequest) -> LLMWhispererEmulator:
    return llmwhisperer_demo_emulator(processing_seconds=0.3, status_generation=request.param)


def two_pipelines(folder: Path, server: EmulatorServer, db_url: str, **llmw: Any) -> Path:
    for name in ("invoices", "scans"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    llmw_options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in llmw.items())
    text = f"""
[database]
url = "{db_url}"
[daemon]
upload_workers = 4
log_format = "json"
[[pipelines]]
name = "invoices"
watch_dir = "{folder / "invoices"}"
settle_seconds = 0.2
[pipelines.api]
url = "{deployment_url(server)}"
api_key_env = "{KEY_ENV}"
poll_initial_seconds = 0.1
[[pipelines]]
name = "scans"
watch_dir = "{folder / "scans"}"
settle_seconds = 0.2
[pipelines.api]
kind = "llmwhisperer"
url = "{llmwhisperer_url(server)}"
api_key_env = "{LLMW_KEY_ENV}"
poll_initial_seconds = 0.1
poll_max_seconds = 0.5
{llmw_options}
"""
    path = folder / "config.toml"
    path.write_text(text)
    return path


def test_both_kinds_side_by_side(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    whisperer: LLMWhispererEmulator,
    db_url: str,
) -> None:
    config = two_pipelines(tmp_path, server, db_url, write_text_file=True, mode="high_quality")
    for index in range(5):
        (tmp_path / "invoices" / f"inv-{index}.txt").write_bytes(b"invoice %d" % index)
        (tmp_path / "scans" / f"scan-{index}.txt").write_bytes(b"scanned page %d\n" % index)
    (tmp_path / "scans" / "broken.txt").write_bytes(b"EMULATOR-FAIL")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 11, what="eleven documents")
    invoices = results_under(tmp_path / "invoices")
    scans = results_under(tmp_path / "scans")
    assert sorted(invoices) == [f"inv-{i}.txt.json" for i in range(5)]
    assert all(r["backend"] == "unstract" and r["status"] == "success" for r in invoices.values())
    for index in range(5):
        result = scans[f"scan-{index}.txt.json"]
        assert result["backend"] == "llmwhisperer" and result["status"] == "success"
        assert result["whisper_hash"] == result["execution_id"]
        assert f"scanned page {index}" in result["result"]["result_text"]
        text_file = tmp_path / "scans" / f"scan-{index}.txt.txt"
        assert text_file.read_text() == result["result"]["result_text"]
        assert result["sha256"] == sha256(tmp_path / "scans" / f"scan-{index}.txt")
    assert "error" in scans["broken.txt.error.json"]["error"].lower()
    stats = whisperer.stats()
    assert stats.whispers_created == 6 and set(stats.posts_by_sha256.values()) == {1}
    assert set(stats.retrieves_by_hash.values()) == {1}  # each text read exactly once
    assert emulator.stats().executions_created == 5
    # the .txt results beside their sources were not taken as new documents
    assert sum(1 for _ in (tmp_path / "scans").glob("*.txt.txt.json")) == 0


def test_a_retrieve_lost_after_the_text_was_deleted_is_resubmitted(
    tmp_path: Path, server: EmulatorServer, whisperer: LLMWhispererEmulator, db_url: str
) -> None:
    whisperer.set_faults(retrieve_error_after_delete=1)
    config = two_pipelines(tmp_path, server, db_url)
    (tmp_path / "scans" / "a.txt").write_bytes(b"read once")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 1, what="the document")
    assert results_under(tmp_path / "scans")["a.txt.json"]["status"] == "success"
    assert whisperer.stats().whispers_created == 2  # the text was gone: whispered again


def test_a_retrieve_that_failed_before_deleting_is_fetched_again_not_resubmitted(
    tmp_path: Path, server: EmulatorServer, whisperer: LLMWhispererEmulator, db_url: str
) -> None:
    whisperer.set_faults(retrieve_error_before_delete=1)
    config = two_pipelines(tmp_path, server, db_url)
    (tmp_path / "scans" / "a.txt").write_bytes(b"read once")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 1, what="the document")
    assert results_under(tmp_path / "scans")["a.txt.json"]["status"] == "success"
    stats = whisperer.stats()
    assert stats.whispers_created == 1
    assert sum(stats.retrieves_by_hash.values()) == 2  # asked the status, then fetched again


def test_a_bad_llmwhisperer_key_pauses_only_its_pipeline(
    tmp_path: Path, server: EmulatorServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LLMW_KEY_ENV, "not-a-key")
    config = two_pipelines(tmp_path, server, db_url)
    (tmp_path / "scans" / "a.txt").write_bytes(b"waits")
    (tmp_path / "invoices" / "b.txt").write_bytes(b"goes through")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.pipelines["scans"].is_paused(), what="the pause")
        wait_for(lambda: daemon.progress().finished == 1, what="the other pipeline's document")
        assert not daemon.pipelines["invoices"].is_paused()
    assert list(results_under(tmp_path / "invoices")) == ["b.txt.json"]
    assert not results_under(tmp_path / "scans")


@pytest.mark.parametrize("whisperer", ["legacy"], indirect=True)
def test_webhook_retries_exceeded_is_ready_and_the_text_is_retrieved_once(
    tmp_path: Path, server: EmulatorServer, whisperer: LLMWhispererEmulator, db_url: str
) -> None:
    whisperer.set_faults(webhook_retries_exceeded=1)
    config = two_pipelines(tmp_path, server, db_url)
    (tmp_path / "scans" / "a.txt").write_bytes(b"the webhook gave up")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 1, what="the document")
    result = results_under(tmp_path / "scans")["a.txt.json"]
    assert result["status"] == "success"
    assert "the webhook gave up" in result["result"]["result_text"]
    stats = whisperer.stats()
    assert whisperer.faults.webhook_retries_exceeded == 0  # this whisper reported it
    assert stats.whispers_created == 1
    assert dict(stats.retrieves_by_hash) == {result["whisper_hash"]: 1}


@pytest.mark.parametrize("whisperer", ["current"], indirect=True)
def test_a_500_after_the_whisper_was_created_is_held_when_the_policy_says_hold(
    tmp_path: Path, server: EmulatorServer, whisperer: LLMWhispererEmulator, db_url: str
) -> None:
    whisperer.set_faults(post_error_after_create=1)
    config = two_pipelines(tmp_path, server, db_url, on_unknown_outcome="hold")
    (tmp_path / "scans" / "a.txt").write_bytes(b"billed once")
    with running_daemon(config) as daemon:
        wait_for(
            lambda: any(j.state is JobState.HELD for j in daemon.store.list_jobs()),
            what="the held job",
        )
        jobs = daemon.store.list_jobs("scans")
    assert [(j.state, j.attempts) for j in jobs] == [(JobState.HELD, 1)]
    assert "outcome unknown" in jobs[0].last_error
    stats = whisperer.stats()
    assert (stats.posts, stats.whispers_created) == (1, 1)  # never sent twice
    assert not results_under(tmp_path / "scans")
