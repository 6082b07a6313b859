"""The service unit's hardening: its `systemd-analyze security` score stays at or under the one
docs/install.md states, and the daemon works under the unit's system call filter (applied with
libseccomp exactly as systemd derives it from the unit's lines)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

from harness import KEY_ENV, api_key, deployment_url, results_under, wait_for, write_config

from watcher.emulator import EmulatorServer

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "systemd" / "unstract-watcher.service"


def analyze(*args: str) -> str:
    command = shutil.which("systemd-analyze")
    assert command, "systemd-analyze is needed (Debian package systemd)"
    done = subprocess.run([command, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_security_score_is_at_most_the_readmes() -> None:
    stated = re.search(
        r"`systemd-analyze security` rates it \*\*(\d+\.\d)\*\*",
        (ROOT / "docs" / "install.md").read_text(),
    )
    assert stated, "docs/install.md states the unit's score"
    found = re.search(
        r"Overall exposure level for \S+: (\d+\.\d)",
        analyze("security", "--offline=true", str(UNIT)),
    )
    assert found and float(found[1]) <= float(stated[1]), found
    text = UNIT.read_text()
    for line in (
        "ProtectProc=invisible",
        "RemoveIPC=yes",
        "PrivateMounts=yes",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
    ):
        assert f"\n{line}\n" in text, line


@cache
def group(name: str) -> frozenset[str]:
    """The syscalls of a systemd group, nested groups expanded."""
    members: set[str] = set()
    for line in analyze("syscall-filter", "--no-pager", name).splitlines()[1:]:
        entry = line.strip()
        if entry.startswith("@"):
            members |= group(entry)
        elif entry and not entry.startswith("#"):
            members.add(entry)
    return frozenset(members)


def unit_allows() -> set[str]:
    """What the unit's SystemCallFilter= lines allow, in their order (a `~` line takes away)."""
    allowed: set[str] = set()
    for value in re.findall(r"^SystemCallFilter=(.*)$", UNIT.read_text(), re.MULTILINE):
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.removeprefix("~").split():
            names |= group(item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


def test_the_daemon_works_under_the_units_system_call_filter(
    tmp_path: Path, server: EmulatorServer
) -> None:
    allowed = unit_allows()
    assert "setrlimit" not in allowed and "chown" not in allowed and "read" in allowed
    filtered = [
        sys.executable,
        str(Path(__file__).parent / "seccomp_exec.py"),
        ",".join(sorted(allowed)),
        "--",
    ]
    probe = "import os\ntry:\n    os.setpriority(os.PRIO_PROCESS, 0, 1)\nexcept PermissionError:\n    print('denied')"
    denied = subprocess.run(
        [*filtered, sys.executable, "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert denied.stdout.strip() == "denied", denied.stderr  # the filter is on
    config = write_config(tmp_path, deployment_url(server), f"sqlite:///{tmp_path / 'state.db'}")
    (tmp_path / "drop" / "before.txt").write_bytes(b"there at the start")
    daemon = [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)]
    process = subprocess.Popen(
        [*filtered, *daemon],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, KEY_ENV: api_key()},
    )
    try:
        wait_for(
            lambda: "before.txt.json" in results_under(tmp_path / "drop"),
            what="the first result under the filter",
        )
        (tmp_path / "drop" / "after.txt").write_bytes(b"seen by inotify")
        wait_for(
            lambda: "after.txt.json" in results_under(tmp_path / "drop"),
            what="a document dropped while it runs",
        )
        process.send_signal(signal.SIGHUP)  # a reload, as systemctl reload sends it
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert all(r["status"] == "success" for r in results_under(tmp_path / "drop").values())
