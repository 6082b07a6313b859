"""Scans that ask the job table about a batch of paths at a time (the history stays on disk),
and go on a slice at a time so that new files are not held back; on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path

import pytest

from watcher import watch
from watcher.config import DEFAULT_INCLUDE
from watcher.filters import FileFilter
from watcher.store import Store
from watcher.watch import LOOKUP_BATCH, Discovered, FolderWatcher


class Hashes:
    """Counts the files the watcher reads (hashes), calling the real function."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = watch.sha256_of

        def counted(path: Path) -> tuple[str, int]:
            self.paths.append(path.name)
            return real(path)

        monkeypatch.setattr(watch, "sha256_of", counted)


def watcher_on(store: Store, root: Path, queued: list[str]) -> FolderWatcher:
    def enqueue(found: list[Discovered]) -> None:
        rows = [(f.relative_path, f.sha256, f.size, f.mtime_ns) for f in found]
        ids = store.enqueue_many("p", rows)
        queued.extend(f.relative_path for f, job in zip(found, ids, strict=True) if job)

    return FolderWatcher(
        "p",
        root,
        recursive=True,
        file_filter=FileFilter(include=tuple(DEFAULT_INCLUDE)),
        settle_seconds=0.0,
        known=partial(store.known_versions, "p"),
        enqueue=enqueue,
        wake=threading.Event(),
    )


def test_a_scan_from_the_table_dedups_and_never_hashes_an_unchanged_file_again(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes = Hashes(monkeypatch)
    root = tmp_path / "drop"  # beside the SQLite file, not around it
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("same")
    (root / "sub" / "b.txt").write_text("other")
    queued: list[str] = []
    watcher_on(store, root, queued).scan(now=0.0)
    assert sorted(queued) == ["a.txt", "sub/b.txt"] and len(hashes.paths) == 2
    # A restart: a new watcher, nothing in memory, everything from the table.
    watcher_on(store, root, queued).scan(now=1.0)
    assert len(hashes.paths) == 2 and len(queued) == 2
    rewritten = (root / "a.txt").stat().st_mtime_ns + 10**9  # a new mtime, the same content
    os.utime(root / "a.txt", ns=(rewritten, rewritten))
    watcher = watcher_on(store, root, queued)
    watcher.scan(now=2.0)
    assert hashes.paths[2:] == ["a.txt"] and len(queued) == 2  # read once, not queued again
    watcher.scan(now=3.0)
    assert len(hashes.paths) == 3  # its new stat was recorded
    (root / "copy.txt").write_text("same")  # the same content at another path
    (root / "sub" / "b.txt").write_text("changed")
    watcher.scan(now=4.0)
    assert sorted(queued[2:]) == ["copy.txt", "sub/b.txt"]


def test_the_table_is_asked_a_batch_at_a_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "drop"  # beside the SQLite file, not around it
    root.mkdir()
    for index in range(2 * LOOKUP_BATCH + 10):
        (root / f"{index}.txt").write_text(str(index))
    asked: list[int] = []
    real = store.known_versions

    def counted(pipeline: str, paths: list[str]) -> object:
        asked.append(len(paths))
        return real(pipeline, paths)

    monkeypatch.setattr(store, "known_versions", counted)
    queued: list[str] = []
    watcher_on(store, root, queued).scan(now=0.0)
    assert (
        sorted(asked) == [10, LOOKUP_BATCH, LOOKUP_BATCH] and len(queued) == 2 * LOOKUP_BATCH + 10
    )


def test_a_new_file_is_queued_while_a_big_scan_is_under_way(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "drop"  # beside the SQLite file, not around it
    tree = root / "tree"
    tree.mkdir(parents=True)
    for index in range(4 * LOOKUP_BATCH):
        (tree / f"{index:05}.txt").write_text(str(index))
    queued: list[str] = []
    watcher_on(store, root, queued).scan(now=0.0)  # the history: all known
    queued.clear()
    watcher = watcher_on(store, root, queued)  # a restart
    watcher.start_scan()
    watcher.scan_some(now=1.0, budget_seconds=0.0)  # one batch of the listing
    (root / "new.txt").write_text("dropped after the start")
    watcher.hint(str(root / "new.txt"))
    watcher.step(now=1.1)
    assert queued == ["new.txt"] and watcher.scanning  # before the listing got to its end
    while watcher.scanning:
        watcher.scan_some(now=1.2, budget_seconds=0.0)
    assert queued == ["new.txt"]


def test_the_startup_listing_goes_to_the_most_recently_changed_folder_first(
    store: Store, tmp_path: Path
) -> None:
    """A document dropped while the daemon was down changed its folder: that folder is listed
    before the history's (each has its own mtime, set here; none of them is the newest by name
    or by creation)."""
    root = tmp_path / "drop"
    ages = {"new": 10, "history-a": 3000, "history-b": 2000, "history-c": 1000}
    for name in ages:
        (root / name).mkdir(parents=True)
        (root / name / "doc.pdf").write_text(name)
    for name, age in ages.items():
        os.utime(root / name, (1e9 - age, 1e9 - age))
    queued: list[str] = []
    watcher_on(store, root, queued).scan(now=0.0)
    assert queued == [
        "new/doc.pdf",
        "history-c/doc.pdf",
        "history-b/doc.pdf",
        "history-a/doc.pdf",
    ]
