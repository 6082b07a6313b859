"""Many pipelines, fixed resources (issue 26): every native folder of the daemon shares one
inotify instance and one reading thread, so threads and instances do not grow with the
number of pipelines, and each event still reaches its own pipeline only."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from harness import (
    deployment_url,
    pipeline_name,
    results_under,
    running_daemon,
    wait_for,
    write_pipelines_config,
)

from watcher.emulator import EmulatorServer

pytestmark = pytest.mark.usefixtures("api_keys")
PIPELINES = 150


def inotify_instances() -> int:
    """The inotify instances this process holds (each an fd on 'anon_inode:inotify')."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:  # closed meanwhile (the listing's own fd)
            pass
    return found


def test_150_native_pipelines_share_one_inotify_instance_and_a_few_threads(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_pipelines_config(tmp_path, deployment_url(server), sqlite_url, PIPELINES)
    threads_before, instances_before = threading.active_count(), inotify_instances()
    with running_daemon(config) as daemon:
        wait_for(daemon.discovery.first_pass_done.is_set, what="every folder listed")
        threads = threading.active_count() - threads_before
        instances = inotify_instances() - instances_before
        assert daemon.discovery.fell_back() == []  # every folder watched natively
        last = tmp_path / "drops" / pipeline_name(PIPELINES - 1)
        (last / "invoice.txt").write_bytes(b"for the last pipeline")
        # rescan_seconds is 30: only its event, sent to its own pipeline, finds it sooner.
        wait_for(lambda: daemon.progress().finished == 1, timeout=15, what="its result")
    assert instances == 1
    assert threads < 40, f"{threads} threads for {PIPELINES} pipelines"
    assert list(results_under(tmp_path / "drops")) == [f"{last.name}/invoice.txt.json"]
