"""Idle, the loops wait long, yet work that no wake-up signals is still noticed in time: jobs
queued by another instance on PostgreSQL are taken up within the lookout's bound, and on
SQLite retries and polls that come due are made when due, not at the end of a long wait."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from harness import deployment_url, running_daemon, wait_for, write_config

from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.jobs import JobState
from watcher.store import Store
from watcher.submit import MAX_IDLE_SECONDS

pytestmark = [pytest.mark.usefixtures("api_keys")]

DOCUMENTS = 8


@pytest.fixture
def execution_seconds() -> float:
    return 0.0


FAILED_POSTS = 2  # retried after at most 2 s, then 4 s (backoff_base_seconds = 2)
SLOW_EXECUTION_SECONDS = 4.0  # longer than any lookout's wait, shorter than the long ones


@pytest.mark.parametrize("execution_seconds", [SLOW_EXECUTION_SECONDS])
@pytest.mark.timeout(120)
def test_on_sqlite_due_retries_and_polls_are_made_on_time(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, sqlite_url: str
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path, deployment_url(server), sqlite_url, pipeline={"output_dir": str(results)}
    )
    with running_daemon(config):
        time.sleep(MAX_IDLE_SECONDS)  # let every loop settle into its idle wait
        emulator.set_faults(post_error_before_create=FAILED_POSTS)
        (tmp_path / "drop" / "late.txt").write_bytes(b"retried, then slow\n")
        dropped_at = time.monotonic()
        wait_for(lambda: (results / "late.txt.json").exists(), timeout=60.0, what="the result")
        took = time.monotonic() - dropped_at
    # settle 0.3 s, retries after 2 + 4 s at most, the execution, polls at most 1 s apart.
    assert took < 0.3 + 6.0 + SLOW_EXECUTION_SECONDS + 1.0 + 1.5, took


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_jobs_queued_by_another_instance_are_all_done_within_the_lookouts_bound(
    tmp_path: Path, server: EmulatorServer, postgres_url: str
) -> None:
    config = write_config(
        tmp_path,
        deployment_url(server),
        postgres_url,
        pipeline={"output_dir": str(tmp_path / "results"), "rescan_seconds": 3600.0},
    )
    drop = tmp_path / "drop"
    other_instance = Store(postgres_url)
    try:
        with running_daemon(config, watch_events=False):
            time.sleep(MAX_IDLE_SECONDS)  # let every loop settle into its idle wait
            files = []
            for index in range(DOCUMENTS):
                content = b"queued elsewhere %d\n" % index
                path = drop / f"doc-{index}.txt"
                path.write_bytes(content)
                stat = path.stat()
                sha256 = hashlib.sha256(content).hexdigest()
                files.append((path.name, sha256, stat.st_size, stat.st_mtime_ns))
            queued_at = time.monotonic()
            other_instance.enqueue_many("docs", files)

            def all_done() -> bool:
                jobs = other_instance.list_jobs("docs")
                return len(jobs) == DOCUMENTS and all(j.state == JobState.DONE for j in jobs)

            wait_for(all_done, timeout=30.0, what="the other instance's jobs done")
            took = time.monotonic() - queued_at
    finally:
        other_instance.close()
    # Noticed by the lookout within MAX_IDLE_SECONDS, then the rest at once: a handful of
    # instant executions, polled from 0.1 s, not a helper's long wait per document.
    assert took < MAX_IDLE_SECONDS + 3.0, took
