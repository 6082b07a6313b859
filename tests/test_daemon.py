"""The daemon's supervision of its loops: what stops it, and what it waits out."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from harness import running_daemon, wait_for, write_config

from watcher import daemon as daemon_module
from watcher.config import load
from watcher.daemon import Daemon
from watcher.store import Store


@pytest.fixture
def daemon(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, api_keys: None
) -> Iterator[Daemon]:
    config = write_config(tmp_path, "http://127.0.0.1:9/deployment/api/org/api/", sqlite_url)
    monkeypatch.setattr(daemon_module, "OUTAGE_FIRST_WAIT_SECONDS", 0.01)
    store = Store(sqlite_url)
    yield Daemon(load(config), store)
    store.close()


def test_a_database_outage_pauses_a_loop_instead_of_stopping_the_daemon(daemon: Daemon) -> None:
    calls = []

    def loop() -> None:  # the database is down for its first two rounds (a fault we cannot
        calls.append(1)  # make a real server produce without breaking it for everyone)
        if len(calls) <= 2:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    daemon._supervised(loop)
    assert len(calls) == 3 and daemon.failure is None and not daemon.stop_event.is_set()


def test_any_other_error_in_a_loop_stops_the_daemon(daemon: Daemon) -> None:
    def loop() -> None:
        raise ValueError("a bug")

    daemon._supervised(loop)
    assert isinstance(daemon.failure, ValueError) and daemon.stop_event.is_set()


def test_a_stop_during_an_outage_ends_the_wait(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "OUTAGE_FIRST_WAIT_SECONDS", 60.0)
    failed = threading.Event()

    def loop() -> None:
        failed.set()
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    supervisor = threading.Thread(target=daemon._supervised, args=(loop,))
    supervisor.start()
    assert failed.wait(10)  # the outage began; the supervisor now waits 60 s to try again
    stopped_at = time.monotonic()
    daemon.stop()
    supervisor.join(10)
    assert not supervisor.is_alive() and time.monotonic() - stopped_at < 5.0
    assert daemon.failure is None


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
