"""A watch_dir (or a subfolder) deleted, moved away or replaced while the daemon runs: the new
folder at that path is watched within seconds, not found by the next rescan minutes later."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from harness import (
    deployment_url,
    results_under,
    running_daemon,
    wait_for,
    write_config,
)

from watcher.daemon import Daemon
from watcher.emulator import EmulatorServer

# Far beyond every wait below: a document found only by the rescan fails the test.
RESCAN_SECONDS = 600.0


pytestmark = pytest.mark.usefixtures("api_keys")


def config_for(tmp_path: Path, server: EmulatorServer, db_url: str, observer: str) -> Path:
    pipeline = {
        "rescan_seconds": RESCAN_SECONDS,
        "observer": observer,
        "polling_interval_seconds": 0.5,
        "recursive": True,
    }
    return write_config(tmp_path, deployment_url(server), db_url, pipeline=pipeline)


def drop_and_wait(daemon: Daemon, folder: Path, name: str, finished: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(f"content of {folder.name}/{name}".encode())
    wait_for(lambda: daemon.progress().finished == finished, timeout=10, what=f"{name}'s result")
    assert results_under(folder)[f"{name}.json"]["status"] == "success"


def missing_reported(daemon: Daemon) -> bool:
    return any("watch_dir of pipeline docs" in p for p in daemon.health_problems())


@pytest.mark.parametrize("observer", ["native", "polling"])
@pytest.mark.parametrize("how", ["moved away", "deleted"])
def test_a_replaced_watch_dir_is_watched_again_at_once(
    tmp_path: Path, server: EmulatorServer, db_url: str, observer: str, how: str
) -> None:
    drop = tmp_path / "drop"
    with running_daemon(config_for(tmp_path, server, db_url, observer)) as daemon:
        drop_and_wait(daemon, drop, "before.txt", 1)
        if how == "moved away":
            drop.rename(tmp_path / "old-drop")  # an unmounted share, a tool's rename
        else:
            shutil.rmtree(drop)
        wait_for(lambda: missing_reported(daemon), timeout=5, what="/healthz to report it")
        drop.mkdir()  # the share is back, or the tool made the folder anew
        drop_and_wait(daemon, drop, "after.txt", 2)
        wait_for(lambda: not missing_reported(daemon), timeout=5, what="health again")
        assert daemon.hung_loops() == []


def test_a_watch_dir_swapped_in_one_step_is_noticed(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    drop = tmp_path / "drop"
    with running_daemon(config_for(tmp_path, server, db_url, "native")) as daemon:
        drop_and_wait(daemon, drop, "before.txt", 1)
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        drop.rename(tmp_path / "old-drop")
        fresh.rename(drop)  # never missing for longer than two renames
        drop_and_wait(daemon, drop, "after.txt", 2)


def test_a_replaced_subfolder_is_watched_again(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    sub = tmp_path / "drop" / "scanner"
    with running_daemon(config_for(tmp_path, server, db_url, "native")) as daemon:
        drop_and_wait(daemon, sub, "before.txt", 1)
        sub.rename(tmp_path / "old-scanner")
        drop_and_wait(daemon, sub, "after.txt", 2)
        shutil.rmtree(sub)
        drop_and_wait(daemon, sub, "again.txt", 3)
