"""What the set-up must allow the daemon's user, proved without changing anything: every
`watch_dir` listable, every output and archive folder writable (or creatable), the SQLite
database's folder and file writable.

The config loader runs these checks with its own (see `config.environment_problems`), so
`check-config` and `run` report them with every other problem of the file, each naming its
key. They are asked as the user the process runs as: run `check-config` as the service's user.
This module reads a pipeline's folders only (`Folders`), so that the loader can import it.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

from watcher.filters import as_text
from watcher.logs import get_logger

log = get_logger()
# As the kernel would decide for this process (its effective ids), where os.access can ask so.
EFFECTIVE = os.access in os.supports_effective_ids
LISTABLE = os.R_OK | os.X_OK
WRITABLE = os.W_OK | os.X_OK


class Folders(Protocol):
    """The keys of a pipeline (`config.PipelineConfig`) that name its folders."""

    @property
    def watch_dir(self) -> Path: ...
    @property
    def output_dir(self) -> Path | Literal[""]: ...
    @property
    def archive_dir(self) -> Path | Literal[""]: ...
    @property
    def after_success(self) -> str: ...


Labelled = Iterable[tuple[str, Folders]]  # pipelines by label: `pipelines[0] ("docs")`


def pipeline_problems(label: str, pipeline: Folders) -> list[str]:
    """What stops a pipeline: its watch_dir not listable (if it is a folder), its results
    or moved sources not writable."""
    problems = [_watch_dir_problem(f"{label}.watch_dir", pipeline.watch_dir)]
    if problems[0] is None and pipeline.output_dir == "":  # results go beside their sources
        problems.append(_beside_problem(label, pipeline.watch_dir))
    for key, folder in configured_folders(pipeline):
        problems.append(_writing_problem(f"{label}.{key}", folder))
        if key == "archive_dir":  # sources go to processed/ and failed/ in it
            subfolders = [folder / "processed", folder / "failed"]
            problems += [
                _writing_problem(f"{label}.{key}", s) for s in subfolders if os.path.exists(s)
            ]
    return [problem for problem in problems if problem is not None]


def database_problems(path: Path | None) -> list[str]:
    """A SQLite file (`path`) the daemon could not open for writing (its folder holds the
    journal); None: not a SQLite file."""
    if path is None:
        return []
    problems = [_writing_problem("database.url", path.parent, "the database's folder ")]
    if os.path.exists(path) and not _allowed(path, os.R_OK | os.W_OK):
        problems.append(f"database.url: the database file {_text(path)} {_refusal(path, 'write')}")
    return [problem for problem in problems if problem is not None]


def creation_notes(pipelines: Labelled) -> list[str]:
    """The folders the daemon will create at its start: check-config says so."""
    return [
        f"{key}: {_text(folder)} does not exist; the daemon will create it"
        for key, folder in _keyed_folders(pipelines)
        if not os.path.exists(folder)
    ]


def create_missing(pipelines: Labelled) -> None:
    """At the daemon's start: create the output and archive folders that do not exist, with
    a line each (a misspelt output_dir is not created without a word)."""
    for key, folder in _keyed_folders(pipelines):
        if os.path.exists(folder):
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the finisher reports it again as results wait for it
            log.error("cannot create folder", key=key, folder=_text(folder), error=exc.strerror)
            continue
        log.warning("folder created: it did not exist", key=key, folder=_text(folder))


def configured_folders(pipeline: Folders) -> list[tuple[str, Path]]:
    """The folders of a pipeline the daemon creates and writes into, by key."""
    folders: list[tuple[str, Path]] = []
    if pipeline.output_dir != "":
        folders.append(("output_dir", Path(pipeline.output_dir)))
    if pipeline.archive_dir != "" and pipeline.after_success == "move":
        folders.append(("archive_dir", Path(pipeline.archive_dir)))
    return folders


def _keyed_folders(pipelines: Labelled) -> list[tuple[str, Path]]:
    return [
        (f"{label}.{key}", folder)
        for label, pipeline in pipelines
        for key, folder in configured_folders(pipeline)
    ]


def _watch_dir_problem(key: str, folder: Path) -> str | None:
    try:
        info = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return f"{key}: {_text(folder)} does not exist or is not a folder"
    except OSError as exc:  # a folder above it is closed to us
        return f"{key}: {_text(folder)} cannot be reached by {_user()}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{key}: {_text(folder)} does not exist or is not a folder"
    return _listing_problem(key, folder)


def _listing_problem(key: str, folder: Path) -> str | None:
    if not _allowed(folder, LISTABLE):
        return f"{key}: {_text(folder)} {_refusal(folder, 'list')}"
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as exc:
        return f"{key}: {_text(folder)} cannot be listed: {exc.strerror or exc}"
    return None


def _beside_problem(label: str, watch_dir: Path) -> str | None:
    if _allowed(watch_dir, WRITABLE):
        return None
    return (
        f"{label}.output_dir: '' writes results beside the sources, but the watch_dir "
        f"{_text(watch_dir)} {_refusal(watch_dir, 'write')}; set output_dir"
    )


def _writing_problem(key: str, folder: Path, noun: str = "") -> str | None:
    """A folder to write into: writable if it exists, else creatable under its nearest
    existing parent."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        return f"{key}: {noun}{_text(existing)} is not a folder"
    if _allowed(existing, WRITABLE):
        return None
    if existing == folder:
        return f"{key}: {noun}{_text(folder)} {_refusal(folder, 'write')}"
    refusal = _refusal(existing, "write")
    return f"{key}: {noun}{_text(folder)} cannot be created: {_text(existing)} {refusal}"


def _allowed(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=EFFECTIVE)


def _refusal(path: Path, what: str) -> str:
    """Why the check failed, in words: a read-only file system, or the permissions."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY and what == "write":
            return "is on a read-only file system"
    except OSError:
        pass
    return f"cannot be {'listed' if what == 'list' else 'written'} by {_user()}: permission denied"


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _text(path: Path) -> str:
    return as_text(str(path))
