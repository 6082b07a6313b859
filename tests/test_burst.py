"""Bursts of documents written in place: many files settling at once (issue 17 point 6)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from harness import (
    Collector,
    deployment_url,
    make_watcher,
    results_under,
    running_daemon,
    sha256,
    wait_for,
    write_config,
)

from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.files import FileStat, StabilityTracker
from watcher.observers import start_observer
from watcher.watch import FolderWatcher


def test_due_names_exactly_the_settled_paths_among_many_pending() -> None:
    tracker = StabilityTracker(settle_seconds=1.0)
    for index in range(5000):  # observed in a scrambled order of times
        tracker.observe(f"f{index}", FileStat(1, 1), now=(index * 7919 % 5000) / 1000)
    tracker.observe("f0", FileStat(2, 2), now=4.9)  # grew: its wait starts again
    tracker.forget("f1")
    tracker.observe("f2", None, now=2.0)  # gone
    expected = {f"f{i}" for i in range(3, 5000) if (i * 7919 % 5000) / 1000 <= 1.5}
    assert set(tracker.due(2.5)) == expected
    assert len(tracker.due(2.5)) == len(expected)  # each once, and still pending until observed
    for path in expected:
        assert tracker.observe(path, FileStat(1, 1), now=2.5)
    assert not set(tracker.due(2.5))
    assert tracker.next_check() == pytest.approx(
        min((i * 7919 % 5000) / 1000 + 1.0 for i in range(3, 5000) if f"f{i}" not in expected)
    )


def test_a_path_observed_anew_at_one_moment_is_due_once_and_settles_once() -> None:
    tracker = StabilityTracker(settle_seconds=0.5)
    tracker.observe("x", FileStat(1, 1), now=1.0)
    tracker.forget("x")
    tracker.observe("x", FileStat(2, 2), now=1.0)
    tracker.observe("x", FileStat(3, 3), now=1.0)
    assert tracker.due(2.0) == ["x"]
    assert tracker.observe("x", FileStat(3, 3), now=2.0)
    assert tracker.due(9.0) == [] and tracker.next_check() is None and not tracker


def test_a_file_still_written_in_a_burst_is_queued_only_once_it_stood_still(
    tmp_path: Path,
) -> None:
    collector, wake = Collector(), threading.Event()
    watcher = make_watcher(tmp_path, collector, settle_seconds=0.3, wake=wake)
    observer = start_observer(watcher, polling=False, polling_interval=1.0)
    slow = tmp_path / "part-0" / "slow.txt"
    try:
        for part in range(3):  # a burst in place, the slow file among its documents
            (tmp_path / f"part-{part}").mkdir()
            for index in range(200):
                (tmp_path / f"part-{part}" / f"doc-{index}.txt").write_bytes(b"%d" % index)
        with slow.open("wb") as handle:
            for piece in range(8):
                handle.write(b"piece %d\n" % piece)
                handle.flush()
                # Each piece within settle_seconds of the last: never queued meanwhile.
                wait_for(lambda: _passes(watcher, wake, 0.1), what="a discovery pass")
                assert "part-0/slow.txt" not in collector.versions
        wait_for(lambda: _passes(watcher, wake, 0.0) and len(collector.queued) >= 601, what="601")
    finally:
        observer.stop()
        observer.join()
    assert len(collector.queued) == 601  # each once
    assert collector.versions["part-0/slow.txt"].sha256 == sha256(slow)  # the whole file


def _passes(watcher: FolderWatcher, wake: threading.Event, seconds: float) -> bool:
    """One discovery step after `seconds` (or an event) passed; True to go on."""
    wake.wait(seconds)
    wake.clear()
    watcher.step(time.monotonic())
    return True


@pytest.mark.usefixtures("api_keys")
def test_a_burst_written_in_place_into_subfolders_gets_every_result_once(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, sqlite_url: str
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path, deployment_url(server), sqlite_url, pipeline={"output_dir": str(results)}
    )
    drop = tmp_path / "drop"
    with running_daemon(config) as daemon:
        for index in range(400):
            folder = drop / f"part-{index // 100}"
            folder.mkdir(exist_ok=True)
            (folder / f"doc-{index:03}.txt").write_bytes(b"document %d\n" % index)
        wait_for(lambda: len(results_under(results)) == 400, timeout=60, what="400 results")
        wait_for(lambda: daemon.progress().unfinished == 0, what="all jobs finished")
    assert all(r["status"] == "success" for r in results_under(results).values())
    assert emulator.stats().executions_created == 400
    assert set(emulator.stats().posts_by_sha256.values()) == {1}
