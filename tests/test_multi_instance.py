"""Several daemon processes share one PostgreSQL database and one folder, as on a shared mount.

One is killed midway; the others take its work over. Every document must end with exactly one
result file, and a second execution only where the log explains it.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import KEY_ENV, api_key, deployment_url, results_under, sha256, wait_for, write_config

from watcher.emulator import DEMO_ORG, EmulatorServer, UnstractEmulator

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def execution_seconds() -> float:
    return 0.3


def events(log: Path) -> list[dict[str, object]]:
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.timeout(300)  # three daemon processes and a lease to run out, on two cores
def test_three_instances_one_killed(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, postgres_url: str
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path,
        deployment_url(server),
        postgres_url,
        pipeline={"output_dir": str(results), "rescan_seconds": 5.0},
        daemon={"instance_id": ""},  # hostname:pid, a different one for each process
        api={"max_in_flight": 12, "read_timeout_seconds": 3.0, "connect_timeout_seconds": 1.0},
    )
    drop = tmp_path / "drop"
    documents = {}
    for index in range(200):
        path = drop / f"doc-{index:03}.txt"
        path.write_bytes(b"shared document %d\n" % index)
        documents[path.name] = sha256(path)
    command = [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)]
    env = {**os.environ, KEY_ENV: api_key()}
    logs = [tmp_path / f"instance-{i}.log" for i in range(3)]
    handles = [log.open("w") for log in logs]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=handle)
        for handle in handles
    ]
    try:
        wait_for(lambda: len(results_under(results)) >= 40, timeout=60, what="work under way")
        processes[0].send_signal(signal.SIGKILL)  # dies holding uploads, polls and writes
        processes[0].wait(10)
        wait_for(lambda: len(results_under(results)) == 200, timeout=120, what="all 200 results")
        time.sleep(1.0)
    finally:
        if processes[0].poll() is None:
            processes[0].kill()
            processes[0].wait(10)
        for process in processes[1:]:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(30) for process in processes[1:]]
        for handle in handles:
            handle.close()
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs[1:]]
    found = results_under(results)
    assert sorted(found) == sorted(f"{name}.json" for name in documents)
    assert all(found[f"{n}.json"]["sha256"] == digest for n, digest in documents.items())
    stats = emulator.stats()
    assert stats.max_concurrent[DEMO_ORG] <= 12  # max_in_flight holds across the instances
    survivors = [event for log in logs[1:] for event in events(log)]
    explained = sum(
        int(str(e["jobs"])) for e in survivors if str(e["event"]).startswith("uploads interrupted")
    )
    explained += sum(1 for e in survivors if str(e["event"]).startswith("result is gone"))
    repeats = sum(stats.posts_by_sha256[digest] - 1 for digest in documents.values())
    assert all(stats.posts_by_sha256[digest] >= 1 for digest in documents.values())
    assert repeats <= explained  # every second execution comes from the killed instance
    writes = collections.Counter(
        str(e["path"]) for e in survivors if e["event"] == "result written"
    )
    assert max(writes.values()) == 1  # no document's file was written twice by the survivors
