"""What operators read: JSON lines with each document's context, priorities for journald."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import KEY_ENV, api_key, deployment_url, write_config

from watcher.emulator import EmulatorServer


def test_every_line_about_a_document_names_it(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    (tmp_path / "drop" / "a.txt").write_bytes(b"Invoice 1\nTotal: 3.00 EUR\n")
    (tmp_path / "drop" / "bad.txt").write_bytes(b"EMULATOR-FAIL secret content")
    done = subprocess.run(
        [sys.executable, "-m", "watcher.cli", "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, KEY_ENV: api_key()},
    )
    assert done.returncode == 1, done.stderr  # bad.txt failed
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    about = {"submitted", "execution ended", "result written", "error file written"}
    for line in (x for x in lines if x["event"] in about):
        assert {"pipeline", "job_id", "path", "execution_id"} <= line.keys(), line
    events = {(x["event"], x.get("path")) for x in lines}
    assert ("result written", "a.txt") in events and ("error file written", "bad.txt") in events
    assert "secret content" not in done.stderr and "Total: 3.00" not in done.stderr


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
