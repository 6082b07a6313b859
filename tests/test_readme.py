"""The README's commands work as written: its config (with its folders moved into a
temporary folder and its URL to the emulator) passes `check-config`, `run --once` processes
what is dropped, the daemon starts and stops, and the commands of "Operations in short"
answer. (The demo command has its own test in test_e2e; CI runs the test command.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from harness import deployment_url

from watcher.emulator import DEMO_KEY, EmulatorServer
from watcher.emulator.results import FAIL_MARKER

ROOT = Path(__file__).resolve().parent.parent
README_URL = "https://us-central.unstract.com/deployment/api/org_abc123/invoices/"


def code_blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```$", readme, re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(indent + body) for indent, body in found]


def commands(block: str) -> list[str]:
    lines = (line.partition("  #")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def shell(line: str, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )


def readme_setup(folder: Path, server: EmulatorServer) -> None:
    """The README's config, its folders under `folder`; the drop folder and the database's
    made as docs/install.md makes them; a document that fails, then one that succeeds."""
    config = code_blocks("toml")[0]
    for path in ("/var/lib/unstract-watcher", "/srv/drop/invoices", "/srv/results/invoices"):
        config = config.replace(path, str(folder / path.strip("/").replace("/", "-")))
    (folder / "invoices.toml").write_text(config.replace(README_URL, deployment_url(server)))
    (folder / "var-lib-unstract-watcher").mkdir()
    drop = folder / "srv-drop-invoices"
    drop.mkdir()
    (drop / "a-refused.txt").write_bytes(FAIL_MARKER + b": its execution fails")
    (drop / "b-invoice.txt").write_bytes(b"an invoice")


def test_the_readme_commands_work_as_written(tmp_path: Path, server: EmulatorServer) -> None:
    readme_setup(tmp_path, server)
    use, operations = code_blocks("sh")[2:4]
    *checks, daemon = [
        line.replace("=...", f"={DEMO_KEY}") for line in commands(use)
    ]  # export, check-config, check-config --online, run --once; then the daemon
    script = " && ".join(checks[:-1])
    checked = shell(script, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "will create it" in checked.stdout  # the output folder, named by its key
    once = shell(f"{checks[0]} && {checks[-1]}", tmp_path)
    assert once.returncode == 1, once.stderr[-2000:]  # "1 if any failed": the refused one
    assert (tmp_path / "srv-results-invoices" / "b-invoice.txt.json").is_file()

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with subprocess.Popen(
        ["bash", "-c", f"{checks[0]} && exec {daemon}"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as running:
        assert running.stderr is not None
        for line in running.stderr:
            if '"started"' in line:
                break
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=30) == 0

    for line in commands(operations):
        answered = shell(line, tmp_path)
        assert answered.returncode == 0, f"{line}: {answered.stdout}{answered.stderr}"
    assert (tmp_path / "invoices.csv").is_file()
