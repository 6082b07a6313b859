"""Rescans that list only the folders whose mtime moved, and full listings at start, after
lost events and at the long interval; real files on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from test_scan import watcher_on

from watcher import observe, watch
from watcher.store import Store
from watcher.watch import LOOKUP_BATCH, FolderWatcher

AN_HOUR_AGO = 3600


def tree(root: Path) -> list[Path]:
    """A drop folder with three subfolders of one file, all last changed an hour ago (a
    folder changed within the last two seconds is always listed: see folders.RACY_NS)."""
    folders = [root, root / "a", root / "b", root / "b" / "deep"]
    for folder in folders[1:]:
        folder.mkdir(parents=True)
        (folder / f"{folder.name}.txt").write_text(folder.name)
    for folder in folders:
        age_folder(folder)
    return folders


def age_folder(folder: Path) -> None:
    old = os.stat(folder).st_mtime - AN_HOUR_AGO
    os.utime(folder, (old, old))


def rescan(watcher: FolderWatcher, now: float) -> tuple[int, int]:
    """Run the rescan the discovery loop would start: (folders listed, folders unchanged)."""
    watcher.start_scan()
    while watcher.scanning:
        watcher.scan_some(now, budget_seconds=0.0)
    return watcher.marks.listed, watcher.marks.skipped


def test_a_rescan_lists_only_the_folders_that_changed(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "drop"
    folders = tree(root)
    queued: list[str] = []
    watcher = watcher_on(store, root, queued)
    assert rescan(watcher, now=0.0) == (4, 0)  # the first listing is full
    assert sorted(queued) == ["a/a.txt", "b/b.txt", "b/deep/deep.txt"]
    assert rescan(watcher, now=1.0) == (0, 4)  # nothing changed: every folder only stat'ed
    (root / "b" / "deep" / "late.txt").write_text("no event reported it")
    assert rescan(watcher, now=2.0) == (1, 3)
    assert queued[3:] == ["b/deep/late.txt"]
    age_folder(folders[3])  # its ctime moved: listed once more, then trusted again
    assert rescan(watcher, now=3.0) == (1, 3)
    assert rescan(watcher, now=4.0) == (0, 4)
    assert queued[3:] == ["b/deep/late.txt"]


def test_a_new_subfolder_is_listed_and_a_removed_one_forgotten(
    store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "drop"
    tree(root)
    queued: list[str] = []
    watcher = watcher_on(store, root, queued)
    rescan(watcher, now=0.0)
    (root / "a" / "new").mkdir()
    (root / "a" / "new" / "n.txt").write_text("in a new folder")
    (root / "b" / "deep" / "deep.txt").unlink()
    (root / "b" / "deep").rmdir()
    assert rescan(watcher, now=1.0) == (3, 1)  # a, a/new, b listed; the root trusted
    assert queued[3:] == ["a/new/n.txt"]
    # Only the root is remembered: b/deep is gone, a, a/new and b changed just now.
    assert len(watcher.marks) == 1


def test_full_listings_at_start_at_the_long_interval_and_after_lost_events(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "drop"
    tree(root)
    queued: list[str] = []
    rescan(watcher_on(store, root, queued), now=0.0)  # the history, known to the table
    watcher = watcher_on(store, root, queued)  # a restart
    assert rescan(watcher, now=1.0) == (4, 0)
    written_in_place = root / "a" / "a.txt"
    written_in_place.write_text("changed in place; its folder's mtime stays")
    assert rescan(watcher, now=2.0) == (0, 4)
    assert queued[3:] == []  # only an event (or a full listing) says so
    monkeypatch.setattr(watch, "FULL_LISTING_SECONDS", 0.0)
    assert rescan(watcher, now=3.0) == (4, 0)  # the long interval is over
    assert queued[3:] == ["a/a.txt"]
    monkeypatch.undo()
    assert rescan(watcher, now=4.0) == (0, 4)
    observe._OVERFLOW.watchers.add(watcher)
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"  # what watchdog 7 logs
    )
    assert watcher.lost_events()
    assert rescan(watcher, now=5.0) == (4, 0)
    assert not watcher.lost_events()


def test_a_file_that_could_not_be_read_is_tried_again_at_the_next_rescan(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "drop"
    tree(root)
    real_sha256_of = watch.sha256_of
    refuse = {"a.txt"}

    def sha256_of(path: Path) -> tuple[str, int]:
        if path.name in refuse:
            raise PermissionError(13, "Permission denied")
        return real_sha256_of(path)

    monkeypatch.setattr(watch, "sha256_of", sha256_of)
    many = [f"{index:04}.txt" for index in range(LOOKUP_BATCH + 100)]
    for name in many:  # a folder of more than one lookup batch, none of it readable
        (root / "b" / name).write_text(name)
    refuse.update(many)
    age_folder(root / "b")
    queued: list[str] = []
    watcher = watcher_on(store, root, queued)
    rescan(watcher, now=0.0)
    assert "a/a.txt" not in queued and not any(f"b/{name}" in queued for name in many)
    refuse.clear()  # the operator fixes the permissions (a chmod is not a folder change)
    assert rescan(watcher, now=1.0) == (2, 2)
    assert "a/a.txt" in queued and len(queued) == 3 + len(many)
