"""The `run --once` progress bar on a terminal: its total is what the folders hold at the
start (new or changed documents, and jobs left unfinished), so it never grows back as settled
files join; log lines are printed above the bar instead of through it."""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from tqdm import tqdm

from watcher.config import PipelineConfig
from watcher.daemon import Daemon
from watcher.store import KnownFile


def drain_with_progress(daemon: Daemon) -> None:
    """Wait until the daemon has drained; with a progress bar when stderr is a terminal."""
    if not sys.stderr.isatty():
        daemon.wait_until_drained()
        return
    done = daemon.progress()
    # In this order: a job queued meanwhile is in `unfinished` or, once known, not counted new.
    total = done.finished + done.unfinished + documents_to_take(daemon)
    # A pty that reports no size (ssh without a tty size, `script`) would hide tqdm's bar.
    size = shutil.get_terminal_size()
    with tqdm(desc="documents", unit="doc", total=total, ncols=max(size.columns, 40),
              nrows=max(size.lines, 5)) as bar, logs_above():  # fmt: skip
        waiter = _background(daemon.wait_until_drained)
        while True:
            figures = daemon.progress()
            # Never backwards: the total only grows (a file dropped meanwhile), n only counts up.
            bar.total = total = max(total, figures.finished + figures.unfinished)
            bar.n = max(bar.n, figures.finished)
            bar.set_postfix(failed=figures.failed, refresh=False)
            if not waiter.is_alive():
                bar.total = bar.n  # drained: what was counted but not taken was nothing to do
                bar.refresh()
                break
            bar.refresh()
            waiter.join(0.2)


def documents_to_take(daemon: Daemon) -> int:
    """Files in the pipelines' folders that the watcher will take: new, or changed since the
    job table last saw them (by size and mtime, as the watcher decides)."""
    return sum(
        _new_in(pipeline.config, daemon.store.known_files(name))
        for name, pipeline in list(daemon.pipelines.items())
    )


def _new_in(config: PipelineConfig, known: dict[str, KnownFile]) -> int:
    take = config.file_filter()
    count = 0
    for relative in _files(config.watch_dir.resolve(), config.recursive, take.excludes_dir):
        if not take.takes(relative):
            continue
        try:
            info = os.stat(config.watch_dir / relative)
        except OSError:
            continue
        seen = known.get(relative)
        if stat.S_ISREG(info.st_mode) and (seen is None or (seen.size, seen.mtime_ns) != (
                info.st_size, info.st_mtime_ns)):  # fmt: skip
            count += 1
    return count


def _files(root: Path, recursive: bool, excluded: Callable[[str], bool]) -> Iterator[str]:
    """Relative paths of the files under root (symlinked folders not followed, as the watcher)."""
    for folder, folders, names in os.walk(root):
        here = Path(folder).relative_to(root)
        folders[:] = [f for f in folders if recursive and not excluded((here / f).as_posix())]
        yield from ((here / name).as_posix() for name in names)


class _AboveTheBar(io.StringIO):
    """A stream for structlog that prints whole lines above the bar (tqdm.write)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            tqdm.write(line, file=sys.stderr)
        return len(text)


@contextmanager
def logs_above() -> Iterator[None]:
    """While the bar shows, log lines go above it instead of tearing it."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=_AboveTheBar()))
    try:
        yield
    finally:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


def _background(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
