"""Packed executions end to end: the daemon, real files, the emulator over loopback, both
databases. What an operator looks at: each document's own result or error file, and how many
executions the API saw."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from harness import deployment_url, results_under, running_daemon, sha256, wait_for, write_config

from watcher.emulator import DEMO_API, DEMO_ORG, EmulatorServer, UnstractEmulator
from watcher.jobs import Job, JobState

pytestmark = pytest.mark.usefixtures("api_keys")
FOLDERS = ("a", "b", "c")


@pytest.fixture
def execution_seconds() -> float:
    return 0.3


def drop_backlog(drop: Path, per_folder: int) -> list[str]:
    """The same file names in every folder, each document its own content."""
    paths = []
    for folder in FOLDERS:
        (drop / folder).mkdir(parents=True, exist_ok=True)
        for index in range(per_folder):
            path = drop / folder / f"doc-{index}.txt"
            path.write_bytes(f"document {index} of folder {folder}\n".encode())
            paths.append(path.relative_to(drop).as_posix())
    return paths


def packed_config(tmp_path: Path, server: EmulatorServer, db_url: str, limit: int) -> Path:
    return write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        pipeline={"output_dir": str(tmp_path / "results")},
        api={"files_per_execution": 4, "max_in_flight": limit},
    )


def executions(jobs: list[Job]) -> dict[str, list[Job]]:
    shared: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.execution_id is not None:
            shared[job.execution_id].append(job)
    return shared


def test_a_backlog_shares_executions_and_each_document_gets_its_own_answer(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    config = packed_config(tmp_path, server, db_url, limit=2)
    drop = tmp_path / "drop"
    paths = drop_backlog(drop, 4)
    (drop / "a" / "bad.txt").write_bytes(b"this one fails: EMULATOR-FAIL")
    results = tmp_path / "results"
    with running_daemon(config) as daemon:
        wait_for(lambda: len(results_under(results)) == 13, what="13 result files")
        wait_for(lambda: daemon.progress().unfinished == 0, what="all jobs finished")
        jobs = daemon.store.list_jobs()
    found = results_under(results)
    for path in paths:
        result = found[f"{path}.json"]
        assert result["status"] == "success" and result["attempts"] == 1
        assert result["result"]["output"]["sha256"] == sha256(drop / path)  # its own output
        assert result["metadata"]["source_name"] == path.rsplit("/", 1)[-1]
    bad = found["a/bad.txt.error.json"]
    assert bad["status"] == "failed" and bad["error"]
    shared = executions(jobs)
    assert max(len(group) for group in shared.values()) > 1
    for group in shared.values():  # the server could tell them apart
        assert len({job.upload_name for job in group}) == len(group)
    assert any(
        found[
            f"{job.relative_path}.error.json"
            if job.state is JobState.FAILED
            else f"{job.relative_path}.json"
        ]["execution_id"]
        == job.execution_id
        for group in shared.values()
        if len(group) > 1
        for job in group
    )
    stats = emulator.stats()
    assert stats.executions_created < 13
    assert all(count == 1 for count in stats.posts_by_sha256.values())  # nothing sent twice


def test_an_execution_stopped_before_its_files_ran_sends_them_again_alone(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    deployment = emulator.deployment(DEMO_ORG, DEMO_API)
    deployment.execution_seconds = 30.0  # until it is stopped
    config = packed_config(tmp_path, server, db_url, limit=1)
    drop = tmp_path / "drop"
    paths = drop_backlog(drop, 3)
    results = tmp_path / "results"
    with running_daemon(config) as daemon:

        def packed_in_flight() -> list[Job]:
            jobs = daemon.store.list_jobs()
            return [j for j in jobs if j.state is JobState.SUBMITTED and j.pack_id is not None]

        wait_for(lambda: bool(packed_in_flight()), what="a packed execution in flight")
        stopped = packed_in_flight()[0].execution_id
        assert stopped is not None
        deployment.execution_seconds = 0.1
        assert emulator.stop_execution(stopped, processed=False)
        wait_for(lambda: len(results_under(results)) == len(paths), what="every result")
        wait_for(lambda: daemon.progress().unfinished == 0, what="all jobs finished")
        jobs = daemon.store.list_jobs()
    found = results_under(results)
    assert sorted(found) == sorted(f"{path}.json" for path in paths)  # all succeeded
    again = [found[f"{j.relative_path}.json"] for j in jobs if j.alone]
    assert len(again) >= 2  # the stopped execution's documents, each sent again alone
    assert all(r["attempts"] == 2 and r["execution_id"] != stopped for r in again)
    assert len({r["execution_id"] for r in again}) == len(again)
