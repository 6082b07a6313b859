"""What operators read: JSON lines with each document's context, priorities for journald."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import deployment_url, run_once, write_config

from watcher.emulator import EmulatorServer


def test_every_line_about_a_document_names_it(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    (tmp_path / "drop" / "a.txt").write_bytes(b"Invoice 1\nTotal: 3.00 EUR\n")
    (tmp_path / "drop" / "bad.txt").write_bytes(b"EMULATOR-FAIL secret content")
    done = run_once(config)
    assert done.returncode == 1, done.stderr  # bad.txt failed
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    about = {"submitted", "execution ended", "result written", "error file written"}
    for line in (x for x in lines if x["event"] in about):
        assert {"pipeline", "job_id", "path", "execution_id"} <= line.keys(), line
    events = {(x["event"], x.get("path")) for x in lines}
    assert ("result written", "a.txt") in events and ("error file written", "bad.txt") in events
    assert "secret content" not in done.stderr and "Total: 3.00" not in done.stderr


def test_each_document_of_a_packed_execution_has_its_own_lines(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        api={"files_per_execution": 4, "max_in_flight": 1},
    )
    for index in range(8):
        (tmp_path / "drop" / f"doc-{index}.txt").write_bytes(f"document {index}\n".encode())
    done = run_once(config)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    path_of = {x["job_id"]: x["path"] for x in lines if x["event"] == "queued"}
    assert len(path_of) == 8
    executions: dict[str, set[int]] = {}
    for event in ("submitted", "execution ended"):
        about = [x for x in lines if x["event"] == event]
        assert sorted(x["job_id"] for x in about) == sorted(path_of), event  # one line each
        for line in about:
            assert line["path"] == path_of[line["job_id"]], line
            executions.setdefault(line["execution_id"], set()).add(line["job_id"])
    assert max(len(jobs) for jobs in executions.values()) > 1  # some were packed


def test_lines_carry_a_priority_for_the_journal(tmp_path: Path) -> None:
    program = (
        "from watcher.logs import configure, get_logger\n"
        "configure('info', 'json')\n"
        "get_logger().error('disk full', pipeline='docs')\n"
        "get_logger().info('queued', pipeline='docs')\n"
    )
    journal = tmp_path / "journal"
    with journal.open("w") as stream:
        info = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        subprocess.run([sys.executable, "-c", program], stderr=stream, env=env, check=True)
        subprocess.run([sys.executable, "-c", program], stderr=stream, check=True)  # no journal
    lines = journal.read_text().splitlines()
    assert lines[0].startswith("<3>{") and json.loads(lines[0][3:])["event"] == "disk full"
    assert lines[1].startswith("<6>{")
    assert lines[2].startswith("{") and lines[3].startswith("{")
