"""Idle, the loops wait long, yet work that no wake-up signals is still noticed in time: jobs
queued by another instance on PostgreSQL are taken up within the lookout's bound."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from harness import deployment_url, running_daemon, wait_for, write_config

from watcher.emulator import EmulatorServer
from watcher.jobs import JobState
from watcher.store import Store
from watcher.submit import MAX_IDLE_SECONDS

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("api_keys")]

DOCUMENTS = 8


@pytest.fixture
def execution_seconds() -> float:
    return 0.0


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
