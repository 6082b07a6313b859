"""The public batch script on the throughput scenario's files, for issue 14's ratio.

`Zipstack/unstract-api-deployments-batch-run` is what an Unstract user would run instead of
the daemon: a pool of processes, each posting one file and waiting for its answer. The
benchmark fetches nothing: it runs the script only when PEER_BATCH_RUN names a checkout of it,
with the interpreter PEER_BATCH_RUN_PYTHON names, or else one of a venv it makes under its work
folder with the script's own requirements.txt (removed with the work folder).
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from harness import BenchError, child_env
from report import Figure, Target

from watcher.emulator import DEMO_KEY

PEER_ENV = "PEER_BATCH_RUN"
PEER_PYTHON_ENV = "PEER_BATCH_RUN_PYTHON"
PEER_PROCESSES = 20  # its README's parallel example (-p 20), and the emulator's org limit
RATIO_TARGET = 3.0  # issue 14: the daemon at least 3 times the script


@dataclass(frozen=True)
class PeerRun:
    docs: int
    completed: int  # rows the script's own database says COMPLETED
    seconds: float  # the script's process, start to exit


def checkout() -> tuple[Path | None, str]:
    """The script's checkout, or None and why the comparison is skipped."""
    raw = os.environ.get(PEER_ENV, "")
    if not raw:
        return None, f"{PEER_ENV} is not set (point it at a checkout of the batch script)"
    path = Path(raw).expanduser().resolve()
    if not (path / "main.py").is_file():
        return None, f"{PEER_ENV}={raw} holds no main.py"
    return path, ""


def interpreter(script: Path, home: Path, say: Callable[[str], None]) -> str:
    """PEER_BATCH_RUN_PYTHON, or a venv of our own with the script's requirements."""
    named = os.environ.get(PEER_PYTHON_ENV, "")
    if named:
        return named
    venv = home / "peer-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        say(f"throughput: installing the batch script's requirements into {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "-r", str(script / "requirements.txt")]
        subprocess.run(pip, check=True, capture_output=True, timeout=600)
    return str(python)


def run(python: str, script: Path, folder: Path, url: str, home: Path, docs: int) -> PeerRun:
    """The script over `folder`, 20 processes, its database and log in `home`."""
    home.mkdir(parents=True, exist_ok=True)
    db_path = home / "file_processing.db"
    args = [
        python,
        str(script / "main.py"),
        *("-e", url, "-k", DEMO_KEY, "-f", str(folder)),
        *("-p", str(PEER_PROCESSES), "--db_path", str(db_path)),
        *("--log_level", "ERROR"),  # its INFO lines would cost it time the daemon does not spend
    ]
    started = time.monotonic()
    with (home / "batch-run.log").open("wb") as log:
        code = subprocess.run(
            args, cwd=home, env=child_env(), stdout=log, stderr=subprocess.STDOUT, timeout=900
        ).returncode
    seconds = time.monotonic() - started
    if code != 0:
        raise BenchError(f"the batch script exited {code}; see {home / 'batch-run.log'}")
    return PeerRun(docs, _completed(db_path), seconds)


def _completed(db_path: Path) -> int:
    with closing(sqlite3.connect(db_path)) as db:
        query = "SELECT count(*) FROM file_status WHERE execution_status = 'COMPLETED'"
        return int(db.execute(query).fetchone()[0])


def figures(daemon_docs_per_s: float, peer: PeerRun | None, why_not: str) -> list[Figure]:
    if peer is None:
        return [_skipped(why_not)]
    if peer.completed != peer.docs:
        raise BenchError(f"the batch script completed {peer.completed} of {peer.docs} documents")
    peer_rate = peer.docs / peer.seconds
    note = (
        f"Zipstack/unstract-api-deployments-batch-run, -p {PEER_PROCESSES}, on the same "
        f"{peer.docs} files against the same emulator, after the daemon; its process start to "
        f"exit ({peer.seconds:.1f} s, its interpreter and pool start included)"
    )
    return [
        Figure(
            "throughput",
            "peer_batch_run_docs_per_s",
            "batch script docs/s",
            peer_rate,
            "docs/s",
            note=note,
        ),
        Figure(
            "throughput",
            "peer_batch_run_ratio",
            "daemon / batch script",
            daemon_docs_per_s / peer_rate,
            "x",
            Target(">=", RATIO_TARGET),
        ),
    ]


def _skipped(why_not: str) -> Figure:
    return Figure(
        "throughput",
        "peer_batch_run_ratio",
        "daemon / batch script",
        math.nan,
        "x",
        note=f"comparison skipped: {why_not}",
    )
