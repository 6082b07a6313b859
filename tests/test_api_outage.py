"""An API outage of minutes (the server stopped, then a gateway's 503 and 502 pages) while
documents queue and executions run: the pipeline waits and probes, no document fails or pays
an attempt for it, and everything is done within seconds of the API's return."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    daemon_command,
    deployment_url,
    environment,
    results_under,
    running_daemon,
    wait_for,
    write_config,
)

from watcher.daemon import Daemon
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.jobs import JobState
from watcher.store.operator import summaries

pytestmark = pytest.mark.usefixtures("api_keys")

EXECUTION_SECONDS = 3.0
PHASE_SECONDS = 40.0  # each kind of outage: stopped server, then 503 pages, then 502 pages
PROBE_MAX_SECONDS = 2.0
GRACE_SECONDS = 15.0


@pytest.fixture
def execution_seconds() -> float:
    return EXECUTION_SECONDS


def drop(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_bytes(f"the document {name}".encode())


def states(daemon: Daemon) -> dict[str, JobState]:
    return {job.relative_path: job.state for job in daemon.store.list_jobs()}


def hold_outage(daemon: Daemon, seconds: float) -> None:
    """Watch the outage for `seconds`: no document may fail or use up an attempt meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for job in daemon.store.list_jobs():
            assert job.state not in (JobState.RESULT_STORED, JobState.FAILED, JobState.DONE), job
            assert job.attempts <= 1, job
        time.sleep(0.5)


@pytest.mark.timeout(3 * PHASE_SECONDS + 120)
def test_an_outage_of_minutes_fails_no_document_and_ends_within_seconds_of_the_return(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        api={
            "max_attempts": 2,  # without the outage handling, gone after two refused uploads
            "outage_probe_max_seconds": PROBE_MAX_SECONDS,
            "outage_grace_seconds": GRACE_SECONDS,
            "poll_max_seconds": 0.5,
        },
    )
    inbox = tmp_path / "drop"
    early = [f"early-{i}.txt" for i in range(4)]
    late = [f"late-{i}.txt" for i in range(4)]
    with running_daemon(config) as daemon:
        drop(inbox, early)
        wait_for(
            lambda: list(states(daemon).values()) == [JobState.SUBMITTED] * 4,
            what="four executions running",
        )
        server.stop()  # connection refused: the executions run on, unseen
        drop(inbox, late)
        pipeline = daemon.pipelines["docs"]
        wait_for(lambda: pipeline.outage is not None, what="the outage")
        hold_outage(daemon, PHASE_SECONDS)
        problems = daemon.health_problems()
        assert any("docs: the API is unreachable since" in p for p in problems), problems
        (status,) = summaries(daemon.store, ["docs"])
        assert "unreachable" in status.paused_reason and "refused" in status.paused_reason

        emulator.set_faults(gateway_down=True)  # the server is back behind a gateway: 503s
        with EmulatorServer(emulator, host=server.host, port=server.port):
            hold_outage(daemon, PHASE_SECONDS)
            emulator.set_faults(gateway_down=False, proxy_html=1_000_000)  # 502 pages now
            hold_outage(daemon, PHASE_SECONDS)
            assert pipeline.outage is not None and "gateway" in pipeline.outage.reason
            emulator.set_faults(proxy_html=0)  # the API is back
            wait_for(
                lambda: set(states(daemon).values()) == {JobState.DONE},
                timeout=PROBE_MAX_SECONDS + EXECUTION_SECONDS + 10,
                what="every document within seconds of the API's return",
            )
            assert daemon.health_problems() == []
            (status,) = summaries(daemon.store, ["docs"])
            assert status.paused_reason == ""
            # What the pipeline learnt of its executions' time came from the late ones only:
            # the early ones' end was seen minutes late.
            expected = pipeline.expected_execution_seconds
            assert expected is not None and expected < 2 * EXECUTION_SECONDS, expected
            jobs = daemon.store.list_jobs()

    results = results_under(inbox)
    assert sorted(results) == sorted(f"{name}.json" for name in early + late)
    assert {r["status"] for r in results.values()} == {"success"}
    stats = emulator.stats()
    assert set(stats.posts_by_sha256.values()) == {1}  # nothing sent twice
    assert stats.executions_created == 8
    assert sorted(job.attempts for job in jobs) == [1] * 8
    out = capsys.readouterr().out
    # One outage, said once when it began, once past its grace, once when it ended.
    assert out.count("API unreachable; the pipeline waits") == 1
    assert out.count("API unreachable for longer than outage_grace_seconds") == 1
    assert out.count("API reachable again; pipeline resumed") == 1
    assert "upload failed" not in out and "status poll failed" not in out


def test_a_wrong_key_pauses_the_pipeline_at_start_before_any_document(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(unauthorized=True)
    config = write_config(tmp_path, deployment_url(server), db_url)
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.pipelines["docs"].is_refused(), what="the pause at start")
        assert "API key was refused" in daemon.pipelines["docs"].paused_reason
        wait_for(
            lambda: "API key was refused" in summaries(daemon.store, ["docs"])[0].paused_reason,
            what="the pause in `status`",
        )
    assert emulator.stats().posts == 0


def test_an_api_down_at_start_is_an_outage_before_any_document(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(gateway_down=True)
    config = write_config(tmp_path, deployment_url(server), db_url)
    with running_daemon(config) as daemon:
        pipeline = daemon.pipelines["docs"]
        wait_for(lambda: pipeline.outage is not None, what="the outage at start")
        emulator.set_faults(gateway_down=False)
        wait_for(lambda: pipeline.outage is None, timeout=5, what="the first probes")
        drop(tmp_path / "drop", ["a.txt"])
        wait_for(lambda: daemon.progress().finished == 1, what="the document")
    assert results_under(tmp_path / "drop")["a.txt.json"]["status"] == "success"


def test_run_once_waits_out_a_short_outage_and_gives_up_on_a_long_one(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        api={"outage_grace_seconds": 3.0, "outage_probe_max_seconds": 1.0},
    )
    drop(tmp_path / "drop", ["a.txt", "b.txt"])
    emulator.set_faults(gateway_down=True)
    started = time.monotonic()
    gave_up = subprocess.run(
        daemon_command(config, once=True), env=environment(), capture_output=True, timeout=60
    )
    assert gave_up.returncode == 75, gave_up.stderr[-2000:]
    assert time.monotonic() - started >= 3.0  # it waited out the grace first
    said = gave_up.stderr.decode()
    assert "pipeline docs paused: the API is unreachable since" in said
    assert "503 Service Temporarily Unavailable" in said
    assert emulator.stats().executions_created == 0

    # A run during an outage shorter than the grace waits for the API, then does the work.
    emulator.set_faults(gateway_down=False, proxy_html=1)  # the next request gets a 502
    done = subprocess.run(
        daemon_command(config, once=True), env=environment(), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {r["status"] for r in results_under(tmp_path / "drop").values()} == {"success"}
    assert set(emulator.stats().posts_by_sha256.values()) == {1}


@pytest.mark.parametrize("execution_seconds", [6.0])
def test_an_outage_does_not_count_against_the_execution_deadline(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    """A 6 s execution with a 5 s deadline, 3.5 s of which the API was out of reach: it had
    been seen running for less than its deadline when it ended, so it succeeds."""
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        api={"execution_deadline_seconds": 5.0, "outage_probe_max_seconds": 1.0},
    )
    with running_daemon(config) as daemon:
        drop(tmp_path / "drop", ["long.txt"])
        wait_for(lambda: list(states(daemon).values()) == [JobState.SUBMITTED], what="it runs")
        emulator.set_faults(gateway_down=True)
        pipeline = daemon.pipelines["docs"]
        wait_for(lambda: pipeline.outage is not None, what="the outage")
        time.sleep(3.5)  # the outage's length (the scenario, not a proof)
        emulator.set_faults(gateway_down=False)
        wait_for(lambda: set(states(daemon).values()) == {JobState.DONE}, what="its end")
    assert results_under(tmp_path / "drop")["long.txt.json"]["status"] == "success"
