"""The daemon's supervision of its loops: what stops it, and what it waits out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from harness import running_daemon, wait_for, write_config

from watcher import supervisor as supervisor_module
from watcher.supervisor import Loop, Supervisor


class _Loop(Loop):
    """A loop whose rounds are a function: the database is down for its first rounds, or a
    bug raises (faults we cannot make a real server produce without breaking it for all)."""

    name = "test-loop"

    def __init__(self, round_: Callable[[], None]) -> None:
        super().__init__()
        self.round = round_

    def run(self, stop: threading.Event) -> None:
        self.round()


def _outage() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


def _supervisor() -> tuple[Supervisor, threading.Event]:
    stop = threading.Event()
    return Supervisor(stop, on_failure=stop.set), stop


def test_a_database_outage_pauses_a_loop_instead_of_stopping_the_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor_module, "OUTAGE_FIRST_WAIT_SECONDS", 0.01)
    calls = []

    def round_() -> None:  # down for the first two rounds
        calls.append(1)
        if len(calls) <= 2:
            raise _outage()

    supervisor, stop = _supervisor()
    supervisor.supervise(_Loop(round_))
    assert len(calls) == 3 and supervisor.failure is None and not stop.is_set()


def test_any_other_error_in_a_loop_stops_the_daemon() -> None:
    def round_() -> None:
        raise ValueError("a bug")

    supervisor, stop = _supervisor()
    supervisor.supervise(_Loop(round_))
    assert isinstance(supervisor.failure, ValueError) and stop.is_set()


def test_a_stop_during_an_outage_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "OUTAGE_FIRST_WAIT_SECONDS", 60.0)
    rounds: list[int] = []

    def round_() -> None:
        rounds.append(1)
        raise _outage()

    supervisor, stop = _supervisor()
    waiting = threading.Thread(target=supervisor.supervise, args=(_Loop(round_),))
    waiting.start()
    wait_for(lambda: bool(rounds), what="the outage's first round")
    asked = time.monotonic()
    stop.set()  # well inside the minute's wait
    waiting.join(30)
    assert not waiting.is_alive() and supervisor.failure is None
    assert time.monotonic() - asked < 5 and rounds == [1]


@pytest.mark.usefixtures("api_keys")
def test_health_reports_a_drop_folder_that_cannot_be_listed(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = write_config(
        tmp_path,
        "http://127.0.0.1:9/deployment/api/org/api/",
        sqlite_url,
        pipeline={"rescan_seconds": 0.2},
    )
    with running_daemon(config) as daemon:
        assert daemon.health_problems() == []
        (tmp_path / "drop").rename(tmp_path / "gone")  # an unmounted share, a deleted folder
        wait_for(lambda: bool(daemon.health_problems()), what="the health problem")
        assert "watch_dir of pipeline docs cannot be listed" in daemon.health_problems()[0]
        (tmp_path / "gone").rename(tmp_path / "drop")
        wait_for(lambda: not daemon.health_problems(), what="health again")
