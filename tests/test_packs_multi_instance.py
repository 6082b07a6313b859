"""Two daemon processes share one PostgreSQL database and one folder, and pack documents
into shared executions: every claim of several documents is one instance's, max_in_flight
counts executions across both, and each document gets exactly one result."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import KEY_ENV, api_key, deployment_url, results_under, sha256, wait_for, write_config
from test_multi_instance import events

from watcher.emulator import DEMO_ORG, EmulatorServer, UnstractEmulator

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def execution_seconds() -> float:
    return 1.0  # long enough for both instances to be up while the backlog waits


@pytest.mark.timeout(180)
def test_two_instances_share_packed_claims(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, postgres_url: str
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path,
        deployment_url(server),
        postgres_url,
        pipeline={"output_dir": str(results)},
        daemon={"instance_id": ""},  # hostname:pid, a different one for each process
        api={"max_in_flight": 4, "files_per_execution": 4},
    )
    drop = tmp_path / "drop"
    documents = {}
    for index in range(120):  # four folders holding the same 30 names
        folder = drop / f"scan-{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"page-{index // 4:02}.txt"
        path.write_bytes(b"shared page %d\n" % index)
        documents[path.relative_to(drop).as_posix()] = sha256(path)
    command = [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)]
    env = {**os.environ, KEY_ENV: api_key()}
    logs = [tmp_path / f"instance-{i}.log" for i in range(2)]
    handles = [log.open("w") for log in logs]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=handle)
        for handle in handles
    ]
    try:
        wait_for(lambda: len(results_under(results)) == 120, timeout=120, what="all results")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(30) for process in processes]
        for handle in handles:
            handle.close()
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    found = results_under(results)
    assert sorted(found) == sorted(f"{path}.json" for path in documents)
    assert all(found[f"{p}.json"]["sha256"] == digest for p, digest in documents.items())
    stats = emulator.stats()
    assert all(stats.posts_by_sha256[digest] == 1 for digest in documents.values())
    assert stats.max_concurrent[DEMO_ORG] <= 4  # executions, across both instances
    assert stats.executions_created < 120
    shared = collections.defaultdict(list)
    for path, result in found.items():
        shared[result["execution_id"]].append(path.rsplit("/", 1)[-1])
    assert all(len(set(names)) == len(names) for names in shared.values())
    submitted = [{e["job_id"] for e in events(log) if e["event"] == "submitted"} for log in logs]
    assert all(submitted) and not submitted[0] & submitted[1]  # both worked, never together
