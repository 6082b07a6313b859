"""Result and error files, written atomically, and what happens to the source afterwards.

Paths come only from the pipeline's folders and the job's relative path (which the watcher found
on disk under watch_dir), never from the API's answer.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from watcher.backend import ResultFormat
from watcher.crashpoints import crash_point
from watcher.filters import ERROR_SUFFIX, RESULT_SUFFIX
from watcher.jobs import Job, ResultFile

# Specific enough that the startup sweep never touches a temp file of anyone else.
TEMP_SUFFIX = ".unstract-watcher.tmp"
NAME_MAX = 255  # bytes in one file name on Linux file systems


@dataclass(frozen=True)
class Placement:
    """Where one pipeline's files live."""

    watch_dir: Path
    output_dir: Path | None  # None: beside the source
    after_success: str  # keep | move | delete
    archive_dir: Path | None
    temp_tag: str = "x"  # this instance's mark in temp names, so its restart can sweep them
    result_mode: int = 0o640  # of result, error and side files (result_file_mode)

    def source(self, job: Job) -> Path:
        return self.watch_dir / job.relative_path

    def result_path(self, job: Job) -> Path:
        suffix = RESULT_SUFFIX if job.outcome == "success" else ERROR_SUFFIX
        return self._beside(job, suffix)

    def kept_path(self, job: Job) -> Path:
        """Where its result file goes when a later document of the same name takes the
        name (`a.pdf.<job id>.json`)."""
        suffix = RESULT_SUFFIX if job.outcome == "success" else ERROR_SUFFIX
        return self._beside(job, f".{job.id}{suffix}")

    def file_of(self, job: Job) -> Path | None:
        """The job's result file as its row records it; None: it has none (any more)."""
        if job.result_file in (None, ResultFile.AT_PATH):
            return self.result_path(job)
        return self.kept_path(job) if job.result_file is ResultFile.KEPT else None

    def stale_result_path(self, job: Job) -> Path:
        """The other kind of file for the same source (a success clears an old error file)."""
        suffix = ERROR_SUFFIX if job.outcome == "success" else RESULT_SUFFIX
        return self._beside(job, suffix)

    def _beside(self, job: Job, suffix: str) -> Path:
        folder = self.output_dir if self.output_dir is not None else self.watch_dir
        target = folder / (job.relative_path + suffix)
        if len(os.fsencode(target.name)) <= NAME_MAX:
            return target
        # A source name near the file-system limit: shorten it, keep it unique by job id.
        stem = os.fsencode(target.name)[: NAME_MAX - 40].decode("utf-8", "ignore")
        return target.with_name(f"{stem}~{job.id}{suffix}")


def result_document(job: Job, results: ResultFormat) -> dict[str, Any]:
    """The JSON written for a job whose outcome is stored; pure."""
    success = job.outcome == "success"
    found = results.document(job.result_body, job.upload_name, job.execution_id, success)
    return {
        "source": job.display_path,
        "sha256": job.sha256,
        "size": job.size,
        "status": "success" if success else "failed",
        "backend": results.kind,
        "execution_id": job.execution_id,
        "result": found.result,
        "metadata": found.metadata,
        "error": None if success else (job.last_error or "unknown error"),
        "attempts": job.attempts,
        **found.extra,
    }


def side_path(result_file: Path, suffix: str) -> Path:
    """Where a file beside a result file goes: `a.pdf.json` -> `a.pdf<suffix>`."""
    return result_file.with_name(result_file.name.removesuffix(RESULT_SUFFIX) + suffix)


def temp_beside(path: Path, temp_tag: str) -> Path:
    """A temp name in the same folder: short, whatever the target's name (a long source name
    must not make it too long), and marked so a restart of this instance can sweep it."""
    return path.with_name(f".uw.{temp_tag}-{secrets.token_hex(6)}{TEMP_SUFFIX}")


def write_atomically(
    path: Path, data: bytes, temp_tag: str = "x", sync_folder: bool = True, mode: int = 0o640
) -> None:
    """Temp file in the same folder, fsync, rename over the target, fsync the folder (or
    leave that to the caller, who writes many files to one folder and syncs it once). The
    file gets `mode` as it is: the configured mode is not cut by the daemon's umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_beside(path, temp_tag)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("after_result_temp")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_folder(path.parent)
    crash_point("after_result_replace")


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_result(
    job: Job, placement: Placement, results: ResultFormat, sync_folder: bool = True
) -> Path:
    """The result or error file (a success's side files first); return the result file."""
    data = indented_json(result_document(job, results))
    target = placement.result_path(job)
    side_files = results.side_files(job.result_body) if job.outcome == "success" else ()
    tag, mode = placement.temp_tag, placement.result_mode
    for side in side_files:
        path = side_path(target, side.suffix)
        write_atomically(path, side.content, tag, sync_folder, mode)
    write_atomically(target, data + b"\n", tag, sync_folder, mode)
    placement.stale_result_path(job).unlink(missing_ok=True)
    return target


def indented_json(document: Any) -> bytes:
    """`json.dumps(document, ensure_ascii=False, indent=2)` in UTF-8, written in C (the
    standard library indents in pure Python): the same layout; a number may be spelled
    otherwise (1e16 for 1e+16) and NaN, which JSON has not, becomes null. What orjson
    refuses (an integer past 64 bits) goes through the standard library."""
    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:
        return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


def dispose_source(job: Job, placement: Placement) -> str:
    """Keep, move or delete the source once its result file is durable; say what was done.

    A source that changed since it was hashed is a new version and is left alone.
    """
    source = placement.source(job)
    if placement.after_success == "keep" or not _unchanged(source, job):
        return "kept"
    if placement.after_success == "delete":
        if job.outcome != "success":
            return "kept"
        source.unlink(missing_ok=True)
        return "deleted"
    assert placement.archive_dir is not None
    bucket = "processed" if job.outcome == "success" else "failed"
    target = _free_name(placement.archive_dir / bucket / job.relative_path, job.id)
    target.parent.mkdir(parents=True, exist_ok=True)
    move_durably(source, target, placement.temp_tag)
    return f"moved to {target}"


def move_durably(source: Path, target: Path, temp_tag: str = "x") -> None:
    """Rename; onto another file system, copy to a temp file beside the target, fsync,
    rename, then unlink the source, so a crash never leaves half a file under its name."""
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temp = temp_beside(target, temp_tag)
        try:
            shutil.copy2(source, temp)
            with temp.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        source.unlink()
    fsync_folder(target.parent)


def _unchanged(source: Path, job: Job) -> bool:
    try:
        info = source.stat()  # as the watcher saw it: through a symlink that stays inside
    except FileNotFoundError:
        return False
    return info.st_size == job.size and info.st_mtime_ns == job.mtime_ns


def _free_name(target: Path, job_id: int) -> Path:
    return target if not target.exists() else numbered(target, job_id)


def numbered(target: Path, job_id: int) -> Path:
    """An archived source's name with its job id: `processed/scan.<job id>.pdf`."""
    return target.with_name(f"{target.stem}.{job_id}{target.suffix}")


def remove_stale_temps(
    folder: Path, older_than_seconds: float, now: float, own_tag: str | None = None
) -> int:
    """Delete temp files left by a crash mid-write: this instance's own (`own_tag`), and any
    older than `older_than_seconds` (another instance may be writing a young one); return
    how many."""
    removed = 0
    for temp in folder.rglob(f".*{TEMP_SUFFIX}"):
        try:
            mine = own_tag is not None and f".{own_tag}-" in temp.name
            if temp.is_file() and (mine or now - temp.stat().st_mtime > older_than_seconds):
                temp.unlink()
                removed += 1
        except OSError:
            continue
    return removed
