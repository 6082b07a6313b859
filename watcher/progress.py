"""The `run --once` progress bar on a terminal: its total is what the folders hold at the
start (new or changed documents, and jobs left unfinished), so it never grows back as settled
files join; log lines are printed above the bar instead of through it."""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from watcher.config import PipelineConfig
from watcher.daemon import Daemon
from watcher.watch import LOOKUP_BATCH, Known

if TYPE_CHECKING:
    from tqdm import tqdm


class ProgressBar:
    """A `run --once` main-loop callback: draws the bar from its first round, and keeps log
    lines above it until closed."""

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None
        self._daemon: Daemon | None = None
        self._logs = ExitStack()

    def __call__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        bar = self._bar or self._open(daemon)
        figures = daemon.progress()
        # Never backwards: the total only grows (a file dropped meanwhile), n only counts up.
        bar.total = max(bar.total or 0, figures.finished + figures.unfinished)
        bar.n = max(bar.n, figures.finished)
        bar.set_postfix(failed=figures.failed, refresh=False)
        bar.refresh()

    def _open(self, daemon: Daemon) -> tqdm[Any]:
        from tqdm import tqdm  # only `run --once` on a terminal draws a bar: not the daemon's RSS

        total = _total_at_start(daemon)
        # A pty that reports no size (ssh without a tty size, `script`) would hide tqdm's bar.
        size = shutil.get_terminal_size()
        self._bar = tqdm(
            desc="documents",
            unit="doc",
            total=total,
            ncols=max(size.columns, 40),
            nrows=max(size.lines, 5),
        )
        self._logs.enter_context(logs_above())
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            if self._daemon is not None:  # documents finished after the last round's look
                finished = sum(self._daemon.finisher.outcomes.values())
                self._bar.n = max(self._bar.n, finished)
            self._bar.total = self._bar.n  # drained: what was counted but not taken was nothing
            self._bar.refresh()
            self._bar.close()
        self._logs.close()


@contextmanager
def progress_bar() -> Iterator[ProgressBar | None]:
    """A progress bar for `run --once` when stderr is a terminal, else None."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = ProgressBar()
    try:
        yield bar
    finally:
        bar.close()


def _total_at_start(daemon: Daemon, tries: int = 5) -> int:
    """The jobs in the table and the files it does not know yet. A job queued while the
    folders are counted would be in neither count (or in both, counted the other way round):
    the count holds only if the table's did not change meanwhile."""
    for _ in range(tries):
        before = daemon.progress()
        new = documents_to_take(daemon)
        after = daemon.progress()
        if after.finished + after.unfinished == before.finished + before.unfinished:
            break
    # Still moving: the larger count (the bar's total only grows, and is set right at the end).
    return after.finished + after.unfinished + new


def documents_to_take(daemon: Daemon) -> int:
    """Files in the pipelines' folders that the watcher will take: new, or changed since the
    job table last saw them (by size and mtime, as the watcher decides)."""
    return sum(
        _new_in(pipeline.config, partial(daemon.store.known_versions, name))
        for name, pipeline in list(daemon.pipelines.items())
    )


def _new_in(config: PipelineConfig, known: Known) -> int:
    """Counted a batch at a time, the table asked about each batch: memory stays flat."""
    take = config.file_filter()
    count, batch = 0, []
    for relative in _files(config.watch_dir.resolve(), config.recursive, take.excludes_dir):
        if take.takes(relative):
            batch.append(relative)
        if len(batch) >= LOOKUP_BATCH:
            count, batch = count + _new_of(config.watch_dir, batch, known), []
    return count + _new_of(config.watch_dir, batch, known)


def _new_of(root: Path, relatives: list[str], known: Known) -> int:
    stats = {}
    for relative in relatives:
        try:
            info = os.stat(root / relative)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            stats[relative] = (info.st_size, info.st_mtime_ns)
    seen = known(list(stats))
    changed = (r for r, now in stats.items() if r not in seen or seen[r].stat_key != now)
    return sum(1 for _ in changed)


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
        from tqdm import tqdm

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
