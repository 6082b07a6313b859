"""The daemon end to end: real files and inotify events, real HTTP to the emulator over
loopback, a real SQLite file. Each test asserts what an operator would look at: the result
files, and how many executions the API saw."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import (
    KEY_ENV,
    api_key,
    count_scans,
    deployment_url,
    let_discovery_catch_up,
    results_under,
    running_daemon,
    sha256,
    wait_for,
    write_config,
)

from watcher.emulator import DEMO_API, DEMO_ORG, EmulatorServer, UnstractEmulator
from watcher.jobs import JobState

pytestmark = pytest.mark.usefixtures("api_keys")


@pytest.fixture
def execution_seconds() -> float:
    return 0.2


def document(index: int) -> bytes:
    return f"Invoice {index}\nTotal: {index * 3}.00 EUR\n".encode()


def slow_write(path: Path, content: bytes, pieces: int, pause: float) -> None:
    step = max(1, len(content) // pieces)
    with path.open("wb") as handle:
        for start in range(0, len(content), step):
            handle.write(content[start : start + step])
            handle.flush()
            time.sleep(pause)


def test_fifty_documents_plus_old_ones_plus_a_slow_one(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path, deployment_url(server), db_url, pipeline={"output_dir": str(results)}
    )
    drop = tmp_path / "drop"
    for index in range(5):  # there before the daemon starts
        (drop / f"old-{index}.txt").write_bytes(document(1000 + index))
    slow_content = b"".join(document(i) for i in range(2000, 2040))
    with running_daemon(config) as daemon:
        (drop / "batch" / "sub").mkdir(parents=True)  # a new subfolder, picked up
        writer = threading.Thread(
            target=slow_write, args=(drop / "batch" / "slow.txt", slow_content, 12, 0.12)
        )
        writer.start()
        for index in range(50):
            folder = drop / "batch" / ("sub" if index % 2 else "")
            (folder / f"doc-{index:02}.txt").write_bytes(document(index))
        writer.join()
        wait_for(lambda: len(results_under(results)) == 56, what="56 result files")
        wait_for(lambda: daemon.progress().unfinished == 0, what="all jobs finished")
        let_discovery_catch_up(daemon, drop, results)  # room for any wrong re-ingestion
    found = results_under(results)
    sources = sorted(p.relative_to(drop).as_posix() for p in drop.rglob("*.txt"))
    assert sorted(name.removesuffix(".json") for name in found) == sources
    for name, result in found.items():
        source = drop / name.removesuffix(".json")
        assert result["status"] == "success"
        assert result["sha256"] == sha256(source)  # the final bytes, also for the slow file
        assert result["result"]["output"]["sha256"] == sha256(source)
    stats = emulator.stats()
    assert stats.executions_created == 56  # one execution per document
    assert set(stats.posts_by_sha256.values()) == {1}
    assert sha256(drop / "batch" / "slow.txt") in stats.posts_by_sha256


def test_results_beside_sources_are_never_ingested_again(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scans = count_scans(monkeypatch)
    config = write_config(
        tmp_path, deployment_url(server), db_url, pipeline={"rescan_seconds": 0.5}
    )
    drop = tmp_path / "drop"
    with running_daemon(config) as daemon:
        for index in range(5):
            (drop / f"a-{index}.txt").write_bytes(document(index))
        wait_for(lambda: len(list(drop.glob("*.txt.json"))) == 5, what="5 results")
        seen = len(scans)
        wait_for(lambda: len(scans) >= seen + 3, what="three rescans that see the results")
        wait_for(lambda: daemon.progress().unfinished == 0, what="all jobs finished")
        jobs = daemon.store.list_jobs()
    assert sorted(j.relative_path for j in jobs) == [f"a-{i}.txt" for i in range(5)]
    assert emulator.stats().executions_created == 5
    assert not list(drop.glob("*.json.json"))


def test_same_content_again_is_skipped_changed_content_is_processed(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)
    source = tmp_path / "drop" / "a.txt"
    with running_daemon(config) as daemon:
        source.write_bytes(b"version one")
        wait_for(lambda: daemon.progress().finished == 1, what="first version")
        os.utime(source)  # touched, same content
        source.write_bytes(b"version one")
        let_discovery_catch_up(daemon, source.parent)  # the touched file was looked at again
        assert emulator.stats().executions_created == 1
        source.write_bytes(b"version two")
        wait_for(lambda: daemon.progress().finished == 3, what="second version (and sentinel)")
    result = results_under(tmp_path / "drop")["a.txt.json"]
    assert result["sha256"] == sha256(source)
    assert emulator.stats().executions_created == 2


def test_a_failed_file_gets_an_error_file_with_the_server_text(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)
    drop = tmp_path / "drop"
    (drop / "good.txt").write_bytes(b"fine")
    (drop / "bad.txt").write_bytes(b"this one says EMULATOR-FAIL")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 2, what="both documents")
    found = results_under(drop)
    assert found["good.txt.json"]["status"] == "success"
    error = found["bad.txt.error.json"]
    assert error["status"] == "failed"
    assert "emulated extraction failure" in error["error"]
    assert error["execution_id"]
    assert "bad.txt.json" not in found


def test_a_result_that_is_gone_is_resubmitted_and_never_written_as_success(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.result_ttl_seconds = 0  # every result has expired by the first poll
    config = write_config(tmp_path, deployment_url(server), db_url, api={"max_attempts": 2})
    (tmp_path / "drop" / "a.txt").write_bytes(b"soon gone")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 1, timeout=60, what="the give-up")
    found = results_under(tmp_path / "drop")
    assert list(found) == ["a.txt.error.json"]
    assert "gave up after 2 attempts" in found["a.txt.error.json"]["error"]
    assert emulator.stats().executions_created == 2


@pytest.mark.parametrize("policy", ["move", "delete"])
def test_after_success_moves_or_deletes_the_source(
    tmp_path: Path, server: EmulatorServer, db_url: str, policy: str
) -> None:
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        pipeline={
            "after_success": policy,
            "archive_dir": str(archive),
            "output_dir": str(tmp_path / "out"),
        },
    )
    drop = tmp_path / "drop"
    (drop / "sub").mkdir()
    (drop / "sub" / "ok.txt").write_bytes(b"fine")
    (drop / "sub" / "bad.txt").write_bytes(b"EMULATOR-FAIL")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 2, what="both documents")
    assert not (drop / "sub" / "ok.txt").exists()
    if policy == "move":
        assert (archive / "processed" / "sub" / "ok.txt").read_bytes() == b"fine"
        assert (archive / "failed" / "sub" / "bad.txt").exists()
    else:
        assert (drop / "sub" / "bad.txt").exists()  # a failed source is never deleted
    assert set(results_under(tmp_path / "out")) == {"sub/ok.txt.json", "sub/bad.txt.error.json"}


def test_a_bad_key_pauses_the_pipeline_and_keeps_the_documents(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "00000000-0000-4000-8000-000000000000")
    config = write_config(tmp_path, deployment_url(server), db_url)
    for index in range(12):
        (tmp_path / "drop" / f"{index}.txt").write_bytes(document(index))
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.pipelines["docs"].is_paused(), what="the pause")
        time.sleep(0.5)  # uploads already on the wire when the first 401 came may still land
        refused = emulator.stats().posts
        time.sleep(1.0)
        jobs = daemon.store.list_jobs()
    assert len(jobs) == 12 and all(j.state is JobState.QUEUED for j in jobs)
    assert all(j.attempts == 0 for j in jobs)  # the key's fault is not the documents'
    # Only the uploads already under way when the first 401 came (one per worker) were sent.
    assert refused <= 4
    assert emulator.stats().posts == refused
    assert not results_under(tmp_path / "drop")


def test_run_once_as_a_process(tmp_path: Path, server: EmulatorServer, db_url: str) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)
    for index in range(8):
        (tmp_path / "drop" / f"{index}.txt").write_bytes(document(index))
    command = [sys.executable, "-m", "watcher.cli", "run", "--once", "--config", str(config)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, KEY_ENV: api_key()}
    )
    assert done.returncode == 0, done.stderr
    assert len(results_under(tmp_path / "drop")) == 8
    assert api_key() not in done.stderr + done.stdout
    (tmp_path / "drop" / "bad.txt").write_bytes(b"EMULATOR-FAIL")
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1  # one document failed in this run
    assert (tmp_path / "drop" / "bad.txt.error.json").exists()
    assert len(results_under(tmp_path / "drop")) == 9


def test_emulator_command_serves_the_demo_deployment(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "watcher.cli", "emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "emulator on" in process.stdout.readline()
        assert "/deployment/api/" in process.stdout.readline()
        assert "/api/v2" in process.stdout.readline()
        import httpx

        url = f"http://127.0.0.1:{port}/deployment/api/{DEMO_ORG}/{DEMO_API}/"
        answer = httpx.post(
            url,
            headers={"Authorization": f"Bearer {api_key()}"},
            files={"files": ("a.txt", b"hello", "text/plain")},
        )
        assert answer.status_code == 200
        assert answer.json()["message"]["execution_status"] == "PENDING"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_the_rescan_finds_files_no_event_reported(
    tmp_path: Path, server: EmulatorServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = count_scans(monkeypatch)
    config = write_config(
        tmp_path, deployment_url(server), db_url, pipeline={"rescan_seconds": 0.5}
    )
    with running_daemon(config, watch_events=False) as daemon:
        wait_for(lambda: len(scans) >= 1, what="the startup scan")
        (tmp_path / "drop" / "late.txt").write_bytes(b"only a rescan can see me")
        wait_for(lambda: daemon.progress().finished == 1, what="the rescan")
    assert "late.txt.json" in results_under(tmp_path / "drop")


def test_the_polling_observer_for_network_shares(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        pipeline={"observer": "polling", "polling_interval_seconds": 0.2},
    )
    with running_daemon(config) as daemon:
        for index in range(3):
            (tmp_path / "drop" / f"{index}.txt").write_bytes(document(index))
        wait_for(lambda: daemon.progress().finished == 3, what="three results")
    assert len(results_under(tmp_path / "drop")) == 3


def test_run_once_on_a_terminal_shows_a_progress_bar(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)
    for index in range(6):
        (tmp_path / "drop" / f"{index}.txt").write_bytes(document(index))
    inner = f"{sys.executable} -m watcher.cli run --once --config {config} 2>&1"
    # `script` gives the command a pseudo-terminal, as an operator's shell would.
    done = subprocess.run(
        ["script", "-qec", inner, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, KEY_ENV: api_key()},
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "documents: 100%" in done.stdout and "6/6" in done.stdout


def test_the_readme_demo_command(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "watcher.cli", "demo", "--dir", str(demo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    unstract = results_under(demo / "results")
    assert len(unstract) == 5 and all(r["status"] == "success" for r in unstract.values())
    scans = results_under(demo / "scan-results")
    assert len(scans) == 2 and all(r["backend"] == "llmwhisperer" for r in scans.values())
    assert (demo / "scan-results" / "contract-page-1.txt.txt").read_text().startswith("SERVICE")


def test_a_restart_polls_as_soon_as_the_last_run_had_learnt(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    """What a pipeline learnt of its executions' time is kept at the stop; the next start
    begins with it (its first polls come when executions are likely done, not at the fixed
    gaps of a pipeline that never saw one end)."""
    config = write_config(tmp_path, deployment_url(server), db_url)
    with running_daemon(config) as daemon:
        assert daemon.pipelines["docs"].expected_execution_seconds is None
        (tmp_path / "drop" / "a.txt").write_bytes(b"first run")
        wait_for(lambda: daemon.progress().finished == 1, what="the first run's document")
        learnt = daemon.pipelines["docs"].expected_execution_seconds
    assert learnt is not None
    with running_daemon(config) as daemon:
        assert daemon.pipelines["docs"].expected_execution_seconds == pytest.approx(learnt)
