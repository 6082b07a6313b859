"""Every API fault the emulator can produce, run through the daemon: what the operator sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import (
    deployment_url,
    results_under,
    running_daemon,
    sha256,
    wait_for,
    write_config,
)

from watcher.daemon import Daemon
from watcher.emulator import DEMO_API, DEMO_ORG, EmulatorServer, UnstractEmulator
from watcher.jobs import Job, JobState

pytestmark = pytest.mark.usefixtures("api_keys")


@pytest.fixture
def execution_seconds() -> float:
    return 0.2


def run_documents(
    tmp_path: Path,
    server: EmulatorServer,
    db: str,
    count: int,
    *,
    api: dict[str, Any] | None = None,
    until: str = "finished",
) -> tuple[list[Job], Daemon]:
    """Drop `count` documents, run the daemon until they are finished; return the job rows
    and the stopped daemon (its pipelines and metrics stay readable)."""
    config = write_config(
        tmp_path, deployment_url(server), db, api={"max_attempts": 5, **(api or {})}
    )
    for index in range(count):
        (tmp_path / "drop" / f"{index}.txt").write_bytes(f"document {index}".encode())
    with running_daemon(config) as daemon:
        if until == "finished":
            wait_for(lambda: daemon.progress().finished == count, timeout=60, what="documents")
        else:
            wait_for(
                lambda: any(j.state.value == until for j in daemon.store.list_jobs()),
                timeout=60,
                what=until,
            )
        return daemon.store.list_jobs(), daemon


def uploads(daemon: Daemon, outcome: str) -> float:
    labels = {"pipeline": "docs", "outcome": outcome}
    return daemon.metrics.registry.get_sample_value("unstract_watcher_uploads_total", labels) or 0


def successes(tmp_path: Path) -> list[str]:
    return sorted(
        n for n, r in results_under(tmp_path / "drop").items() if r["status"] == "success"
    )


@pytest.mark.parametrize(
    "fault",
    [
        {"post_error_before_create": 3},  # 500 before anything was created
        {"proxy_html": 4},  # 502 HTML page from a proxy, POSTs and GETs alike
        {"get_error": 4},  # status polls fail: they are simply repeated
        {"post_staging_error": 2},  # 422 execution ERROR at staging
    ],
)
def test_transient_faults_are_retried_without_duplicates(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    fault: dict[str, Any],
) -> None:
    emulator.set_faults(**fault)
    jobs, _ = run_documents(tmp_path, server, db_url, 4)
    assert successes(tmp_path) == [f"{i}.txt.json" for i in range(4)]
    executions = emulator.stats().posts_by_sha256
    for job in jobs:
        # a staging failure creates an ERROR execution; only its retry produces the result
        assert executions[job.sha256] == (
            2 if "post_staging_error" in fault and job.attempts > 1 else 1
        )


def test_a_500_after_the_server_acted_may_duplicate_but_never_loses(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(post_error_after_create=1)
    jobs, daemon = run_documents(tmp_path, server, db_url, 3)
    assert successes(tmp_path) == [f"{i}.txt.json" for i in range(3)]
    assert uploads(daemon, "unknown") == 1  # the 500 was taken as "may exist", not "refused"
    assert sum(emulator.stats().posts_by_sha256.values()) == 4  # and re-sent, as by default
    assert sorted(j.attempts for j in jobs) == [1, 1, 2]


def test_a_500_after_the_server_acted_is_held_when_the_policy_says_hold(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(post_error_after_create=1)
    jobs, _ = run_documents(
        tmp_path, server, db_url, 1, api={"on_unknown_outcome": "hold"}, until="held"
    )
    assert [(j.state, j.attempts) for j in jobs] == [(JobState.HELD, 1)]
    assert "outcome unknown" in jobs[0].last_error and "Server Error (500)" in jobs[0].last_error
    stats = emulator.stats()
    assert (stats.posts, stats.executions_created) == (1, 1)  # never sent twice
    assert not results_under(tmp_path / "drop")


def test_a_dropped_connection_is_resubmitted_by_default(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(post_drop_after_create=1)
    run_documents(tmp_path, server, db_url, 2)
    assert successes(tmp_path) == ["0.txt.json", "1.txt.json"]
    assert sum(emulator.stats().posts_by_sha256.values()) == 3


def test_a_dropped_connection_is_held_when_the_policy_says_hold(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(post_drop_after_create=1)
    jobs, _ = run_documents(
        tmp_path, server, db_url, 1, api={"on_unknown_outcome": "hold"}, until="held"
    )
    assert [(j.state, j.attempts) for j in jobs] == [(JobState.HELD, 1)]
    assert "outcome unknown" in jobs[0].last_error
    assert emulator.stats().executions_created == 1  # never sent twice
    assert not results_under(tmp_path / "drop")


def test_a_slow_server_beyond_the_read_timeout_is_an_unknown_outcome(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(slow_seconds=1.5)
    jobs, _ = run_documents(
        tmp_path,
        server,
        db_url,
        1,
        api={"on_unknown_outcome": "hold", "read_timeout_seconds": 0.5},
        until="held",
    )
    assert "ReadTimeout" in jobs[0].last_error


def test_a_stalled_execution_hits_its_deadline_and_says_so(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.deployment(DEMO_ORG, DEMO_API).stall = True
    run_documents(tmp_path, server, db_url, 1, api={"execution_deadline_seconds": 1.0})
    error = results_under(tmp_path / "drop")["0.txt.error.json"]
    assert "did not finish within 1 s" in error["error"]
    assert "EXECUTING" in error["error"]


def test_429s_halve_the_daemons_concurrency_and_cost_no_attempts(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.org_limit = 3
    jobs, daemon = run_documents(tmp_path, server, db_url, 20, api={"max_in_flight": 10})
    assert len(successes(tmp_path)) == 20
    stats = emulator.stats()
    assert set(stats.posts_by_sha256.values()) == {1}  # one execution, one result per document
    assert all(j.attempts == 1 for j in jobs)  # a 429 is not the document's fault
    assert stats.rate_limited > 0
    # Halved at each 429 (10 -> 5 at most), grown back by 1/allowed per accept: 20 accepts
    # take it to about 8, never back to 10.
    assert daemon.pipelines["docs"].allowed_in_flight < 10
    # Without the halving the workers send every queued document into the limit (about 15
    # 429s here); with it, a few at the start. Retrying 429s without backoff: hundreds.
    assert stats.rate_limited <= 10


def test_an_inactive_deployment_pauses_instead_of_failing_documents(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.deployment(DEMO_ORG, DEMO_API).active = False
    config = write_config(tmp_path, deployment_url(server), db_url)
    (tmp_path / "drop" / "a.txt").write_bytes(b"waiting")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.pipelines["docs"].is_paused(), what="the pause")
        assert "Inactive" in daemon.pipelines["docs"].paused_reason
        emulator.deployment(DEMO_ORG, DEMO_API).active = True
        daemon.resume_pipeline("docs")  # what a reload or restart does
        wait_for(lambda: daemon.progress().finished == 1, what="the document after resuming")
    assert results_under(tmp_path / "drop")["a.txt.json"]["sha256"] == sha256(
        tmp_path / "drop/a.txt"
    )
