"""The API key never shows: not in logs at any level, results, check-config output or argv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import KEY_ENV, api_key, deployment_url, wait_for, write_config

from watcher.emulator import EmulatorServer, UnstractEmulator


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "watcher.cli", "run", "--once", "--config", str(config)]
    env = {**os.environ, KEY_ENV: api_key()}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def everything_written(folder: Path) -> str:
    texts = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".db" and "-wal" not in path.name:
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_debug_logs_and_results_never_hold_the_key(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(proxy_html=2, get_error=2, post_drop_after_create=1)
    config = write_config(tmp_path, deployment_url(server), db_url, daemon={"log_level": "debug"})
    for index in range(3):
        (tmp_path / "drop" / f"{index}.txt").write_bytes(b"document %d" % index)
    (tmp_path / "drop" / "bad.txt").write_bytes(b"EMULATOR-FAIL")
    done = run_once(config)
    assert done.returncode == 1, done.stderr  # bad.txt failed
    assert '"level": "debug"' in done.stderr  # debug logging was really on
    assert api_key() not in done.stdout + done.stderr
    assert api_key() not in everything_written(tmp_path / "drop")


def test_a_revoked_key_ends_run_once_with_a_clear_message_and_no_key(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    emulator.set_faults(unauthorized=True)
    config = write_config(tmp_path, deployment_url(server), db_url, daemon={"log_level": "debug"})
    (tmp_path / "drop" / "a.txt").write_bytes(b"waits for a good key")
    done = run_once(config)
    assert done.returncode == 75
    assert "pipeline docs paused" in done.stderr and "Traceback" not in done.stderr
    assert api_key() not in done.stdout + done.stderr


def test_the_key_is_not_in_the_daemon_arguments(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)
    command = [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)]
    process = subprocess.Popen(
        command,
        env={**os.environ, KEY_ENV: api_key()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc = Path(f"/proc/{process.pid}/cmdline")
        wait_for(lambda: b"watcher.cli" in proc.read_bytes(), what="the daemon's own arguments")
        cmdline = proc.read_bytes()
        assert b"run" in cmdline
        assert api_key().encode() not in cmdline
    finally:
        process.terminate()
        process.wait(10)
