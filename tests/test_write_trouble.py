"""A result folder that refuses files while the daemon runs (issue 24): /healthz and one log
line say which folder and why, not a database message; both clear once a file is written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import deployment_url, mounted_tmpfs, running_daemon, wait_for, write_config
from structlog.testing import capture_logs

from watcher.daemon import Daemon
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.write_trouble import WriteTrouble

PROBLEM = "results cannot be written"


def write_failures(daemon: Daemon) -> float:
    labels = {"pipeline": "docs", "kind": "result_write"}
    value = daemon.metrics.registry.get_sample_value("unstract_watcher_errors_total", labels)
    return value or 0.0


@pytest.mark.usefixtures("quick_write_retries", "api_keys")
def test_a_result_folder_turned_read_only_is_reported_once_and_clears(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with mounted_tmpfs(tmp_path / "results", "size=1m") as results:
        config = write_config(
            tmp_path, deployment_url(server), db_url, pipeline={"output_dir": str(results)}
        )
        with running_daemon(config) as daemon:
            subprocess.run(["mount", "-o", "remount,ro", str(results)], check=True)
            (tmp_path / "drop" / "a.txt").write_bytes(b"its result waits for the folder")
            problem = f"{PROBLEM}: {results}: Read-only file system"
            wait_for(lambda: problem in daemon.health_problems(), what="the health problem")
            wait_for(lambda: write_failures(daemon) >= 3, what="the retries")
            assert problem in daemon.health_problems()
            subprocess.run(["mount", "-o", "remount,rw", str(results)], check=True)
            wait_for(lambda: daemon.progress().finished == 1, what="the result file")
            assert daemon.health_problems() == []
        assert (results / "a.txt.json").exists()
        assert emulator.stats().executions_created == 1
    logged = capsys.readouterr()
    lines = (logged.out + logged.err).splitlines()
    assert len([line for line in lines if PROBLEM in line]) == 1, lines
    assert any("results can be written again" in line for line in lines)
    assert not [line for line in lines if "answer was lost" in line]


def test_a_problem_is_said_once_and_clears_when_its_folder_takes_a_file() -> None:
    trouble, out, other = WriteTrouble(), Path("/out"), Path("/other")
    with capture_logs() as logs:
        for _ in range(3):  # the retries of one problem
            trouble.failed(out, "Permission denied")
            trouble.round_ended(claimed=2, written=set())
        assert trouble.stuck and trouble.problems() == [f"{PROBLEM}: /out: Permission denied"]
        trouble.failed(out, "Read-only file system")  # another problem: said too
        trouble.round_ended(claimed=2, written={other})
        assert not trouble.stuck  # a file went to another folder this round
        trouble.round_ended(claimed=1, written={out})
        assert trouble.problems() == []
        trouble.failed(other, "No space left on device")
        trouble.round_ended(claimed=1, written=set())
        trouble.round_ended(claimed=0, written=set())  # nothing waits: nothing is wrong
        assert trouble.problems() == [] and not trouble.stuck
    said = [(e["log_level"], e["event"]) for e in logs]
    assert said == [
        ("error", f"{PROBLEM}: /out: Permission denied; they stay stored and are tried again"),
        ("error", f"{PROBLEM}: /out: Read-only file system; they stay stored and are tried again"),
        ("info", "results can be written again"),
        (
            "error",
            f"{PROBLEM}: /other: No space left on device; they stay stored and are tried again",
        ),
        ("info", "results can be written again"),
    ]
