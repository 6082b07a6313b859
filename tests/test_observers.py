"""The daemon's observers (observers.py): every native folder on one inotify instance read by
one thread, each folder's events to its own watcher only, polling folders on one poller, and
a folder the kernel's inotify limits refuse polled instead, said once."""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from pathlib import Path

from harness import Collector, make_watcher, wait_for
from structlog.testing import capture_logs

from watcher.observe import Watched
from watcher.observers import Observers, Watch
from watcher.watch import FolderWatcher


def inotify_instances() -> int:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own fd, closed by now
            pass
    return links.count("anon_inode:inotify")


def watcher_of(root: Path) -> tuple[FolderWatcher, Collector, threading.Event]:
    root.mkdir()
    collector, wake = Collector(), threading.Event()
    return make_watcher(root, collector, wake=wake), collector, wake


def steps_until_queued(watcher: FolderWatcher, wake: threading.Event, collector: Collector) -> None:
    def step() -> bool:
        wake.wait(0.05)
        wake.clear()
        watcher.step(time.monotonic())
        return bool(collector.queued)

    wait_for(step, what="the file queued from its event")


def test_folders_share_one_instance_and_each_gets_only_its_own_events(tmp_path: Path) -> None:
    instances, threads = inotify_instances(), threading.active_count()
    observers = Observers()
    watchers = [watcher_of(tmp_path / name) for name in ("a", "b", "c")]
    try:
        for watcher, _, _ in watchers:
            watcher.watch(observers, polling=False, polling_interval=1.0)
        assert inotify_instances() - instances == 1
        assert threading.active_count() - threads <= 3  # inotify's reader, its dispatcher, ours
        (a, _, _), (b, got_b, wake_b), (c, got_c, wake_c) = watchers
        (tmp_path / "b" / "x.pdf").write_bytes(b"%PDF for b")
        steps_until_queued(b, wake_b, got_b)
        assert not a.has_hints() and not c.has_hints()  # the same reader dispatched them all
        a.stop_watching()  # a reload removes a pipeline: the others go on
        (tmp_path / "c" / "y.pdf").write_bytes(b"%PDF for c")
        steps_until_queued(c, wake_c, got_c)
        assert inotify_instances() - instances == 1
    finally:
        observers.close()
    assert inotify_instances() == instances


class WatchLimitReached(Observers):
    """The kernel's answer when max_user_watches is used up, as watchdog raises it (making
    the real limit run out would starve every other inotify user of the machine)."""

    def watch(self, watched: Watched, polling: bool, polling_interval: float) -> Watch:
        if not polling:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return super().watch(watched, polling, polling_interval)


def test_a_folder_refused_by_an_inotify_limit_is_polled_and_said_once(tmp_path: Path) -> None:
    watcher, collector, wake = watcher_of(tmp_path / "drop")
    observers = WatchLimitReached()
    try:
        with capture_logs() as logs:
            watcher.watch(observers, polling=False, polling_interval=0.1)
            (tmp_path / "drop" / "x.pdf").write_bytes(b"%PDF polled")
            steps_until_queued(watcher, wake, collector)  # its poller saw it
            (tmp_path / "drop").rename(tmp_path / "old")  # replaced: watched anew
            (tmp_path / "drop").mkdir()
            assert watcher.check_root()
    finally:
        observers.close()
    limit = (Path("/proc/sys/fs/inotify/max_user_watches")).read_text().strip()
    said = [e for e in logs if e["log_level"] == "error"]
    assert len(said) == 1, said
    assert said[0]["event"].startswith("inotify limit reached; polling this folder instead")
    assert said[0]["limit"] == f"fs.inotify.max_user_watches = {limit}"
    assert said[0]["folder"] == str(tmp_path / "drop") and said[0]["pipeline"] == "p"
    assert watcher.fell_back == said[0]["limit"]


def test_polling_folders_share_one_poller_that_lets_go_of_a_deleted_folder(
    tmp_path: Path,
) -> None:
    threads = threading.active_count()
    observers = Observers()
    watchers = [watcher_of(tmp_path / name) for name in ("a", "b")]
    try:
        for watcher, _, _ in watchers:
            watcher.watch(observers, polling=True, polling_interval=0.05)
        assert threading.active_count() - threads == 1
        (b, got_b, wake_b) = watchers[1]
        (tmp_path / "b" / "x.pdf").write_bytes(b"%PDF polled")
        steps_until_queued(b, wake_b, got_b)
        watch = watchers[0][0]._observer
        assert watch is not None
        (tmp_path / "a").rmdir()
        wait_for(lambda: not watch.following(), what="the poller to see its folder gone")
        assert watch.emitter.poll(time.monotonic()) == math.inf  # never polled again
        assert not watchers[0][0].check_root()  # missing: watched again once it is back
    finally:
        observers.close()


def test_an_overflow_of_the_shared_instance_is_said_once_by_each_folder(tmp_path: Path) -> None:
    observers = Observers()
    watchers = [watcher_of(tmp_path / name) for name in ("a", "b")]
    try:
        for watcher, _, _ in watchers:
            watcher.watch(observers, polling=False, polling_interval=1.0)
        with capture_logs() as logs:
            for message in OVERFLOW_LINES:  # what watchdog 7 logs of one overflow
                logging.getLogger("watchdog.observers.inotify_c").warning(message)
    finally:
        observers.close()
    assert all(watcher.lost_events() for watcher, _, _ in watchers)
    said = [e["pipeline"] for e in logs if e["event"].startswith("inotify dropped events")]
    assert said == ["p", "p"]  # one line each, not one per watchdog line


OVERFLOW_LINES = (
    "Inotify queue overflowed; filesystem events were lost",
    "Inotify queue overflowed; reconciling recursive watches below b'/a'",
    "Inotify queue overflowed; reconciling recursive watches below b'/b'",
)


def test_a_new_subfolder_refused_by_the_watch_limit_is_said_once(tmp_path: Path) -> None:
    observers = Observers()
    (watcher, _, _), (other, _, _) = watcher_of(tmp_path / "a"), watcher_of(tmp_path / "ab")
    refused = OSError(errno.ENOSPC, "inotify watch limit reached")  # as watchdog raises it
    try:
        for one in (watcher, other):
            one.watch(observers, polling=False, polling_interval=1.0)
        with capture_logs() as logs:
            for name in ("new", "newer"):  # what watchdog logs, and goes on
                folder = os.fsencode(tmp_path / "a" / name)
                logging.getLogger("watchdog.observers.inotify").warning(
                    "Unable to watch %r: %s", folder, refused
                )
    finally:
        observers.close()
    limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    said = [e for e in logs if e["log_level"] == "error"]
    assert len(said) == 1, said  # once, and only by the folder's own pipeline
    assert said[0]["event"].startswith("inotify limit reached; a new subfolder is not watched")
    assert said[0]["limit"] == f"fs.inotify.max_user_watches = {limit}"
    assert said[0]["folder"] == str(tmp_path / "a" / "new")
    assert watcher.partly_unwatched == said[0]["limit"] and other.partly_unwatched is None
