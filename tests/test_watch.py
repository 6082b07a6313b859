"""Finding documents: the stability rule (pure), and the folder watcher on real files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from harness import Collector, make_watcher
from structlog.testing import capture_logs

from watcher.config import DEFAULT_INCLUDE
from watcher.files import FileStat, NotARegularFile, StabilityTracker, sha256_of
from watcher.filters import FileFilter
from watcher.observers import start_observer
from watcher.watch import FolderWatcher


def test_a_file_is_stable_only_after_settle_seconds_without_change() -> None:
    tracker = StabilityTracker(settle_seconds=2.0)
    a, b = FileStat(10, 1), FileStat(20, 2)
    assert not tracker.observe("x", a, now=0.0)
    assert not tracker.observe("x", a, now=1.9)
    assert not tracker.observe("x", b, now=1.95)  # grew: the wait starts again
    assert tracker.next_check() == 3.95
    assert not tracker.observe("x", b, now=3.0)
    assert tracker.observe("x", b, now=3.95)
    assert tracker.paths() == []


def test_a_vanished_file_is_forgotten() -> None:
    tracker = StabilityTracker(settle_seconds=1.0)
    tracker.observe("x", FileStat(1, 1), now=0.0)
    assert not tracker.observe("x", None, now=0.5)
    assert tracker.paths() == [] and tracker.next_check() is None


def test_zero_settle_takes_a_file_at_first_sight() -> None:
    assert StabilityTracker(settle_seconds=0).observe("x", FileStat(1, 1), now=0.0)


def test_scan_takes_regular_files_and_skips_the_rest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    root = tmp_path / "drop"
    (root / "sub").mkdir(parents=True)
    (root / "a.pdf").write_bytes(b"%PDF")
    (root / "sub" / "b.txt").write_text("hello")
    (root / "c.pdf.part").write_bytes(b"half")
    (root / "a.pdf.json").write_text("{}")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "linked-dir").symlink_to(outside)
    (root / "inside-link.txt").symlink_to(root / "sub" / "b.txt")
    (root / "broken.txt").symlink_to(root / "nowhere.txt")
    os.mkfifo(root / "pipe.txt")
    (root / "folder.pdf").mkdir()
    collector = Collector()
    make_watcher(root, collector).scan(now=0.0)
    taken = sorted(relative for relative, _, _ in collector.queued)
    assert taken == ["a.pdf", "inside-link.txt", "sub/b.txt"]


def test_non_recursive_watch_ignores_subfolders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "top.txt").write_text("x")
    (tmp_path / "sub" / "low.txt").write_text("y")
    collector = Collector()
    make_watcher(tmp_path, collector, recursive=False).scan(now=0.0)
    assert [r for r, _, _ in collector.queued] == ["top.txt"]


def test_known_files_with_the_same_stat_are_not_hashed_again(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    collector = Collector()
    watcher = make_watcher(tmp_path, collector)
    watcher.scan(now=0.0)
    watcher.scan(now=1.0)
    assert len(collector.queued) == 1
    time.sleep(0.01)
    (tmp_path / "a.txt").write_text("changed")
    watcher.scan(now=2.0)
    assert [size for _, _, size in collector.queued] == [1, 7]


def test_hints_for_a_new_folder_list_it(tmp_path: Path) -> None:
    collector = Collector()
    watcher = make_watcher(tmp_path, collector)
    (tmp_path / "new" / "deep").mkdir(parents=True)
    (tmp_path / "new" / "deep" / "d.txt").write_text("d")
    watcher.hint(str(tmp_path / "new"))
    watcher.step(now=0.0)
    assert [r for r, _, _ in collector.queued] == ["new/deep/d.txt"]


def test_files_under_symlinked_folders_are_not_taken(tmp_path: Path) -> None:
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "private.pdf").write_bytes(b"%PDF private")
    root = tmp_path / "drop"
    root.mkdir()
    (root / "a.pdf").write_bytes(b"%PDF")
    (root / "link").symlink_to(outside)
    (root / "loop").symlink_to(root)
    collector = Collector()
    watcher = make_watcher(root, collector)
    for hinted in ("link/private.pdf", "loop/a.pdf", "loop/loop/a.pdf"):
        watcher.hint(str(root / hinted))  # as the polling observer would report them
    watcher.scan(now=0.0)
    watcher.step(now=0.0)
    assert [r for r, _, _ in collector.queued] == ["a.pdf"]


def test_files_in_an_excluded_archive_are_not_queued_from_native_events(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    (root / "archive" / "processed").mkdir(parents=True)
    collector = Collector()
    wake = threading.Event()
    watcher = FolderWatcher(
        "p",
        root,
        recursive=True,
        settle_seconds=0.0,
        known=collector.known,
        enqueue=collector,
        wake=wake,
        file_filter=FileFilter(include=tuple(DEFAULT_INCLUDE), exclude=("archive",)),
    )
    observer = start_observer(watcher, polling=False, polling_interval=1.0)
    try:
        (root / "archive" / "processed" / "moved.pdf").write_bytes(b"%PDF moved")
        (root / "new.pdf").write_bytes(b"%PDF new")  # its event comes after the archive's
        deadline = time.monotonic() + 10
        while not collector.queued and time.monotonic() < deadline:
            wake.wait(0.1)
            wake.clear()
            watcher.step(now=time.monotonic())
    finally:
        observer.stop()
        observer.join()
    watcher.scan(now=time.monotonic())
    assert [r for r, _, _ in collector.queued] == ["new.pdf"]


def test_a_new_folder_is_not_listed_by_a_watcher_that_is_not_recursive(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "low.txt").write_text("y")
    collector = Collector()
    watcher = make_watcher(tmp_path, collector, recursive=False)
    watcher.hint(str(tmp_path / "sub"))
    watcher.hint(str(tmp_path / "sub" / "low.txt"))
    watcher.step(now=0.0)
    assert collector.queued == []


def warnings_for(root: Path, recursive: bool = True) -> list[tuple[str, str]]:
    """The warnings two scans log, as (message, path)."""
    with capture_logs() as logs:
        watcher = make_watcher(root, Collector(), recursive=recursive)
        watcher.scan(now=0.0)
        watcher.scan(now=1.0)
    return [(e["event"], e["path"]) for e in logs if e["log_level"] == "warning"]


def test_odd_files_named_like_documents_are_warned_about_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.pdf")
    (tmp_path / "broken.pdf").symlink_to(tmp_path / "gone.pdf")
    (tmp_path / "loop.pdf").symlink_to(tmp_path / "loop.pdf")
    (tmp_path / "folder.pdf").mkdir()
    os.mkfifo(tmp_path / "pipe.unknown")  # not named like a document: no warning
    expected = [
        ("broken symlink; ignored", "broken.pdf"),
        ("broken symlink; ignored", "loop.pdf"),
        ("not a regular file; ignored", "pipe.pdf"),
    ]
    assert sorted(warnings_for(tmp_path)) == expected  # a folder in a recursive tree is walked
    folder = ("not a regular file; ignored", "folder.pdf")
    assert sorted(warnings_for(tmp_path, recursive=False)) == sorted([*expected, folder])


def test_hashing_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "a.pdf"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def hash_it() -> None:
        try:
            sha256_of(fifo)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=hash_it, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():  # blocked in open(): a writer that comes and goes frees it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], NotARegularFile)


def test_a_fifo_swapped_in_after_the_stat_is_warned_about_and_not_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.mkfifo(tmp_path / "a.pdf")
    collector = Collector()
    with capture_logs() as logs:
        watcher = make_watcher(tmp_path, collector)
        # As if it had been a regular file when it was last looked at.
        monkeypatch.setattr(watcher, "_stat", lambda relative: FileStat(4, 1))
        watcher.hint(str(tmp_path / "a.pdf"))
        watcher.step(now=0.0)
    assert collector.queued == []
    assert [e["event"] for e in logs] == ["not a regular file; ignored"]


def test_a_root_that_cannot_be_listed_is_reported_until_it_can(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    root.mkdir()
    watcher = make_watcher(root, Collector())
    watcher.scan(now=0.0)
    assert watcher.listing_error is None
    root.rmdir()
    watcher.scan(now=1.0)
    assert watcher.listing_error == f"{root}: No such file or directory"
    (root / "sub").mkdir(parents=True)
    watcher.hint(str(root / "sub"))
    watcher.step(now=2.0)  # listing a subfolder says nothing about the root
    assert watcher.listing_error is not None
    watcher.scan(now=3.0)
    assert watcher.listing_error is None


def test_a_file_the_patterns_pass_over_gets_one_debug_line(tmp_path: Path) -> None:
    for name in ("a.xml", "old.bak.pdf", ".hidden.pdf", "b.pdf.json", "c.pdf"):
        (tmp_path / name).write_bytes(b"x")
    collector = Collector()
    with capture_logs() as logs:
        watcher = make_watcher(tmp_path, collector)
        watcher.filter = FileFilter(include=tuple(DEFAULT_INCLUDE), exclude=("*.bak.*",))
        watcher.scan(now=0.0)
        watcher.scan(now=1.0)  # a rescan says nothing again
    passed = [(e["path"], e["reason"]) for e in logs if e["event"] == "file passed over"]
    assert sorted(passed) == [
        ("a.xml", "not matched by any include pattern"),
        ("old.bak.pdf", "excluded by pattern '*.bak.*'"),
    ]  # built-in rules and our own files are not the patterns' doing: no line
    assert {e["log_level"] for e in logs if e["event"] == "file passed over"} == {"debug"}
    assert [path for path, _, _ in collector.queued] == ["c.pdf"]
