"""Files as they really arrive: held open by a writer, renamed or moved in, listed. The rule
(pure), the folder watcher on real inotify events, and the daemon against the emulator."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import BinaryIO

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
from structlog.testing import capture_logs

from watcher.arrivals import Arrival, Arrivals
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.files import FileStat, open_for_writing
from watcher.observers import start_observer
from watcher.watch import FolderWatcher

A, B = FileStat(10, 1), FileStat(20, 2)


def test_a_created_file_waits_for_its_close_then_settles() -> None:
    arrivals = Arrivals(settle_seconds=1.0, close_wait_seconds=600.0)
    arrivals.arrived("x", Arrival.CREATED, now=0.0)
    assert not arrivals.observe("x", A, now=0.0)
    assert arrivals.stop_waiting(now=599.0) == [] and not arrivals.observe("x", A, now=599.0)
    assert arrivals.next_check() == 600.0 and arrivals  # held: still pending
    arrivals.arrived("x", Arrival.CLOSED, now=599.5)
    assert not arrivals.observe("x", B, now=599.5)
    assert arrivals.next_check() == 600.5
    assert arrivals.due(now=600.5) == ["x"] and arrivals.observe("x", B, now=600.5)
    assert not arrivals


def test_a_moved_in_file_is_taken_at_first_sight() -> None:
    arrivals = Arrivals(settle_seconds=60.0, close_wait_seconds=600.0)
    arrivals.arrived("x", Arrival.CREATED, now=0.0)
    arrivals.arrived("x", Arrival.MOVED_IN, now=1.0)  # the last event counts
    assert arrivals.observe("x", A, now=1.0)
    assert not arrivals.observe("x", A, now=1.0)  # once: then it is an ordinary path
    arrivals.arrived("y", Arrival.MOVED_IN, now=1.0)
    arrivals.events_done()  # never stat'ed (the filter did not take it): forgotten
    assert not arrivals.observe("y", A, now=1.0)


def test_a_file_there_before_its_folders_watch_settles_then_is_asked_about() -> None:
    arrivals = Arrivals(settle_seconds=1.0, close_wait_seconds=600.0)
    arrivals.arrived("x", Arrival.UNSURE, now=0.0)
    assert not arrivals.observe("x", A, now=0.0) and arrivals.observe("x", A, now=1.0)
    assert arrivals.take_unsure("x") and not arrivals.take_unsure("x")
    arrivals.arrived("y", Arrival.UNSURE, now=0.0)
    arrivals.arrived("y", Arrival.CLOSED, now=0.5)  # its close came: nothing to ask
    assert not arrivals.take_unsure("y")


def test_a_listed_file_settles_as_before() -> None:
    arrivals = Arrivals(settle_seconds=2.0, close_wait_seconds=600.0)
    arrivals.arrived("x", Arrival.CHANGED, now=0.0)
    assert not arrivals.observe("x", A, now=0.0)
    assert arrivals.observe("x", A, now=2.0)


def test_a_close_that_never_comes_falls_back_to_settling() -> None:
    arrivals = Arrivals(settle_seconds=1.0, close_wait_seconds=10.0)
    arrivals.arrived("x", Arrival.CREATED, now=0.0)
    arrivals.arrived("y", Arrival.CREATED, now=0.0)
    assert arrivals.stop_waiting(now=10.0) == ["x", "y"]  # held for close_wait_seconds
    assert not arrivals.observe("x", A, now=10.0)  # now it settles like a listed file
    assert arrivals.observe("x", A, now=11.0)
    arrivals.arrived("z", Arrival.CREATED, now=20.0)
    arrivals.events_lost()  # its close may be among them
    assert not arrivals.observe("z", A, now=20.0) and arrivals.observe("z", A, now=21.0)


def test_the_kernel_tells_whether_a_file_is_open_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    with path.open("wb") as writer:
        writer.write(b"%PDF")
        with path.open("rb"):
            assert open_for_writing(path)
    with path.open("rb"):  # readers do not count
        assert not open_for_writing(path)
    assert not open_for_writing(tmp_path / "gone.pdf")


@contextmanager
def watching(
    root: Path, settle: float, polling: bool = False, close_wait: float = 600.0
) -> Iterator[tuple[FolderWatcher, Collector, threading.Event]]:
    collector, wake = Collector(), threading.Event()
    watcher = make_watcher(
        root, collector, settle_seconds=settle, wake=wake, close_wait_seconds=close_wait
    )
    observer = start_observer(watcher, polling=polling, polling_interval=0.1)
    try:
        yield watcher, collector, wake
    finally:
        observer.stop()
        observer.join()


def steps_until(
    watcher: FolderWatcher, wake: threading.Event, condition: Callable[[], bool], what: str
) -> None:
    """Discovery steps, each as events come in, until `condition`."""

    def step() -> bool:
        wake.wait(0.05)
        wake.clear()
        watcher.step(time.monotonic())
        return condition()

    wait_for(step, what=what)


def held(watcher: FolderWatcher, relative: str) -> Callable[[], bool]:
    """Whether the watcher holds the file for its writer's close (its creation was seen)."""
    return partial(watcher.tracker.is_open, relative)


def queued(collector: Collector, count: int) -> Callable[[], bool]:
    return lambda: len(collector.queued) >= count


@contextmanager
def held_open(
    root: Path, settle: float, close_wait: float = 600.0
) -> Iterator[tuple[FolderWatcher, Collector, threading.Event, BinaryIO]]:
    """A watcher of `root`, and its a.pdf written in part, still open, its creation seen."""
    with (
        watching(root, settle, close_wait=close_wait) as (watcher, collector, wake),
        (root / "a.pdf").open("wb") as writer,
    ):
        writer.write(b"%PDF first part")
        writer.flush()
        steps_until(watcher, wake, held(watcher, "a.pdf"), what="its creation")
        yield watcher, collector, wake, writer


def test_a_file_held_open_is_taken_once_its_writer_closed_it(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    with held_open(tmp_path, settle=0.2) as (watcher, collector, wake, writer):
        minutes_later = time.monotonic() + 500  # a long pause, as the watcher sees it
        watcher.step(minutes_later)
        watcher.scan(minutes_later)  # a rescan lists it too
        assert collector.queued == []
        writer.write(b", second part")
        writer.close()
        steps_until(watcher, wake, queued(collector, 1), what="the closed file")
    assert collector.queued == [("a.pdf", sha256(path), path.stat().st_size)]


def test_a_file_whose_close_never_comes_is_taken_after_close_wait_seconds(
    tmp_path: Path,
) -> None:
    drop, outside = tmp_path / "drop", tmp_path / "outside.pdf"
    drop.mkdir()
    outside.write_bytes(b"%PDF linked in: created, never opened here")
    with watching(drop, settle=0.2, close_wait=60.0) as (watcher, collector, wake):
        os.link(outside, drop / "a.pdf")
        steps_until(watcher, wake, held(watcher, "a.pdf"), what="its creation")
        later = time.monotonic() + 60
        with capture_logs() as logs:
            watcher.step(later)  # the wait is over: it settles from here
        watcher.step(later + 1.0)
        assert collector.queued == [("a.pdf", sha256(outside), outside.stat().st_size)]
    assert [(e["event"], e["path"]) for e in logs] == [
        ("no close came; taken once it stands still", "a.pdf")
    ]


def test_a_writer_still_holding_the_file_after_close_wait_seconds_is_waited_for(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.pdf"
    with held_open(tmp_path, settle=0.2, close_wait=60.0) as (watcher, collector, wake, writer):
        later = time.monotonic() + 61
        with capture_logs() as logs:
            watcher.step(later)  # the kernel says it is still open for writing
            watcher.step(later + 1.0)
        assert collector.queued == []
        # Held again, and said so: a writer that never lets go is not a silent wait.
        assert [line["event"] for line in logs] == [
            "a writer still has the file open; waiting for it to close it"
        ]
        assert logs[0]["path"] == "a.pdf"
        writer.write(b", the rest")
        writer.close()
        steps_until(watcher, wake, queued(collector, 1), what="the closed file")
    assert collector.queued == [("a.pdf", sha256(path), path.stat().st_size)]


def test_a_file_made_with_its_new_folder_is_held_while_open(tmp_path: Path) -> None:
    """A scanner that makes the day's folder and its first file at once: the file is there
    before the daemon watches the folder, and its creation is not seen."""
    path = tmp_path / "2026-12-08" / "scan.pdf"
    with watching(tmp_path, settle=0.2) as (watcher, collector, wake):
        path.parent.mkdir()
        with path.open("wb") as writer:
            writer.write(b"%PDF page 1")
            writer.flush()
            steps_until(watcher, wake, held(watcher, "2026-12-08/scan.pdf"), what="a hold")
            watcher.step(time.monotonic() + 500)
            assert collector.queued == []
            writer.write(b", page 2")
        steps_until(watcher, wake, queued(collector, 1), what="the closed file")
    assert collector.queued == [("2026-12-08/scan.pdf", sha256(path), path.stat().st_size)]


def test_files_renamed_or_moved_in_are_taken_at_once_while_still_open(tmp_path: Path) -> None:
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    drop.mkdir()
    (outside / "folder" / "c.pdf").write_bytes(b"%PDF in a folder moved in")
    with watching(drop, settle=3600) as (watcher, collector, wake):
        with (outside / "a.pdf").open("wb") as a, (drop / "b.pdf.part").open("wb") as b:
            a.write(b"%PDF moved in")
            b.write(b"%PDF renamed")
            a.flush()
            b.flush()
            (outside / "a.pdf").rename(drop / "a.pdf")
            (drop / "b.pdf.part").rename(drop / "b.pdf")
            (outside / "folder").rename(drop / "folder")
            steps_until(watcher, wake, queued(collector, 3), what="the files moved in")
    assert {r for r, _, _ in collector.queued} == {"a.pdf", "b.pdf", "folder/c.pdf"}


def test_a_held_file_renamed_is_taken_at_once_and_no_longer_held(tmp_path: Path) -> None:
    with held_open(tmp_path, settle=3600) as (watcher, collector, wake, _):
        (tmp_path / "a.pdf").rename(tmp_path / "c.pdf")
        steps_until(watcher, wake, queued(collector, 1), what="the renamed file")
        assert [r for r, _, _ in collector.queued] == ["c.pdf"]
        steps_until(watcher, wake, lambda: not watcher.tracker, what="nothing held")


def test_files_in_a_new_folder_are_taken_though_their_close_came_before_its_watch(
    tmp_path: Path,
) -> None:
    with watching(tmp_path, settle=0.1, close_wait=3600) as (watcher, collector, wake):
        for folder in range(5):
            (tmp_path / f"new-{folder}" / "deep").mkdir(parents=True)
            for index in range(20):
                (tmp_path / f"new-{folder}" / "deep" / f"{index}.pdf").write_bytes(b"%PDF")
        every = queued(collector, 100)
        steps_until(watcher, wake, every, what="every file, none held for a close")


def test_a_file_opened_for_writing_and_closed_unchanged_is_not_queued_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(b"%PDF")
    with watching(tmp_path, settle=0.0) as (watcher, collector, wake):
        watcher.scan(time.monotonic())
        assert len(collector.queued) == 1
        os.close(os.open(path, os.O_WRONLY))  # a close after writing, without a write
        asked = len(collector.asked)
        steps_until(watcher, wake, lambda: len(collector.asked) > asked, what="its close")
    assert len(collector.queued) == 1


def test_the_polling_observer_has_no_close_and_settles_as_before(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    with watching(tmp_path, settle=0.2, polling=True) as (watcher, collector, wake):
        with path.open("wb") as writer:
            writer.write(b"%PDF still open")
            writer.flush()
            seen = partial(watcher.tracker.__contains__, "a.pdf")
            steps_until(watcher, wake, seen, what="its first sight")
            assert not watcher.tracker.is_open("a.pdf")
            watcher.step(time.monotonic() + 1.0)
            assert [r for r, _, _ in collector.queued] == ["a.pdf"]


def test_after_lost_events_a_file_held_open_settles_as_a_listed_one(tmp_path: Path) -> None:
    with held_open(tmp_path, settle=0.2) as (watcher, collector, _, _):
        watcher.events_lost()
        now = time.monotonic()
        watcher.scan(now)
        watcher.step(now + 1.0)
        assert [r for r, _, _ in collector.queued] == ["a.pdf"]


@pytest.mark.usefixtures("api_keys")
def test_a_writer_pausing_longer_than_settle_seconds_gets_one_upload_of_the_whole_file(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)  # settle_seconds 0.3
    path = tmp_path / "drop" / "scan.txt"
    with running_daemon(config) as daemon:
        wait_for(daemon.discovery.first_pass_done.is_set, what="the first listing")
        with path.open("wb") as writer:
            for page in range(3):
                writer.write(b"page %d of a slow scan\n" % page)
                writer.flush()
                time.sleep(1.0)  # the scanner's pause, with the file open
        wait_for(lambda: "scan.txt.json" in results_under(tmp_path / "drop"), what="a result")
        wait_for(lambda: daemon.progress().unfinished == 0, what="all jobs finished")
    assert emulator.stats().posts_by_sha256 == {sha256(path): 1}
    assert results_under(tmp_path / "drop")["scan.txt.json"]["sha256"] == sha256(path)


@pytest.mark.usefixtures("api_keys")
def test_a_file_moved_in_goes_without_waiting_for_settle_seconds_or_a_close(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, db_url: str
) -> None:
    config = write_config(
        tmp_path, deployment_url(server), db_url, pipeline={"settle_seconds": 600.0}
    )
    outside = tmp_path / "outside.txt"
    with running_daemon(config) as daemon, outside.open("wb") as writer:
        wait_for(daemon.discovery.first_pass_done.is_set, what="the first listing")
        writer.write(b"a whole document, moved in\n")
        writer.flush()
        outside.rename(tmp_path / "drop" / "moved.txt")
        wait_for(lambda: "moved.txt.json" in results_under(tmp_path / "drop"), what="a result")
    assert emulator.stats().posts_by_sha256 == {sha256(tmp_path / "drop" / "moved.txt"): 1}
