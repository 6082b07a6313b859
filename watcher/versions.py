"""Versions of one path and reused names: which finished job may write a path's result file,
and what becomes of another document's file already under that name.

A path's result file only moves forward: it describes the newest version of the path that has
finished, so an older version that finishes late writes nothing (`superseded`). A different
document's result file under the name (a scanner reusing `scan_0001.pdf`, or an earlier
version of an edited file) is kept aside as `scan_0001.pdf.<its job id>.json`, or, with
`on_reused_name = "replace"`, replaced; another document's error file is always replaced.
Whose file it is, the file itself says (its sha256): after a crash at any step the same
decision is made again from what is on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from watcher.crashpoints import crash_point
from watcher.filters import as_text
from watcher.jobs import Job, ResultFile
from watcher.logs import get_logger
from watcher.output import Placement, move_durably, numbered, side_path

log = get_logger()
Key = tuple[str, str]  # a job's pipeline and relative path
KEEP = "keep"  # on_reused_name; the other is "replace"


def may_write(version: int | None, newest_finished: int | None) -> bool:
    """A finished version may write its path's result file unless a newer version of the
    path has already written it (versions of one path are ordered; equal ones both write)."""
    return version is None or newest_finished is None or version >= newest_finished


def newest_of(finished: Mapping[Key, int], batch: Iterable[Job]) -> dict[Key, int]:
    """By (pipeline, path) of the jobs finishing together: the highest version among those
    that finished before (`finished`) and themselves. A job below its path's is superseded:
    a newer version finished first, or finishes with it."""
    newest: dict[Key, int] = {}
    for job in batch:
        key = (job.pipeline, job.relative_path)
        newest[key] = max(newest.get(key, 0), finished.get(key, 0), job.version or 0)
    return newest


def occupant_sha(path: Path) -> str | None:
    """The sha256 of the document whose result file `path` is; None if there is none, or
    it is not a result file of ours."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    sha = document.get("sha256") if isinstance(document, dict) else None
    return sha if isinstance(sha, str) else None


class NewerVersionThere(Exception):
    """The file under the job's name is a newer version's of its path (it finished on
    another instance meanwhile, or its row is not marked yet): the job is superseded and
    moves nothing."""


@dataclass(frozen=True)
class SetAside:
    """Another document's result file that was under a name this job writes."""

    owner: Job
    path: Path
    kept_as: Path | None  # None: replaced (or removed, for the other kind of file)


OwnerOf = Callable[[str], Job | None]  # a content of this job's path -> its job
Record = Callable[[dict[int, ResultFile]], None]  # where those jobs' files are now


def clear_the_way(
    job: Job,
    placement: Placement,
    on_reused_name: str,
    owner_of: OwnerOf,
    record: Record,
    side_suffixes: Sequence[str] = (),
) -> list[SetAside]:
    """Before `job` writes its result file: another document's result file under either of
    its names is kept aside, with its side files (`side_suffixes`: `a.pdf.txt` goes to
    `a.pdf.<id>.txt`); with replace, and for error files, they are left to be replaced. The
    owner's row is told first: a crash right after leaves the row right once this is done
    again (side files go before the result file, whose content says whose it is)."""
    moved = []
    for path in (placement.result_path(job), placement.stale_result_path(job)):
        sha = occupant_sha(path)
        owner = owner_of(sha) if sha is not None and sha != job.sha256 else None
        if owner is None or owner.id == job.id:
            continue
        if not may_write(job.version, owner.version):
            raise NewerVersionThere(owner.id)
        # An error file holds no result (the error stays in the job table): replaced.
        keep = on_reused_name == KEEP and owner.outcome == "success"
        record({owner.id: ResultFile.KEPT if keep else ResultFile.REPLACED})
        kept_as = placement.kept_path(owner) if keep else None
        if kept_as is not None:
            archive_aside(owner, placement)  # first: a crash here leaves the result to move
            crash_point("after_archive_aside")
            _keep_side_files(path, kept_as, side_suffixes)
            os.replace(path, kept_as)
            crash_point("after_set_aside")
        moved.append(SetAside(owner, path, kept_as))
    return moved


def _keep_side_files(result: Path, kept_as: Path, suffixes: Sequence[str]) -> None:
    for suffix in suffixes:
        side = side_path(result, suffix)
        if side.exists():
            os.replace(side, side_path(kept_as, suffix))


def archive_aside(owner: Job, placement: Placement) -> None:
    """With move: the earlier document archived under the name (`processed/scan.pdf`, told
    by its size and mtime) takes its job id (`processed/scan.<id>.pdf`), as its result file
    does; the newest of a name has no id in either name."""
    if placement.after_success != "move" or placement.archive_dir is None:
        return
    archived = placement.archive_dir / "processed" / owner.relative_path
    try:
        info = archived.stat()
    except OSError:
        return
    if (info.st_size, info.st_mtime_ns) == (owner.size, owner.mtime_ns):
        move_durably(archived, numbered(archived, owner.id), placement.temp_tag)


def drop_own_kept_copy(job: Job, placement: Placement) -> None:
    """The job writes under the path's own name again (its content came back): a copy kept
    aside earlier is the same answer twice."""
    placement.kept_path(job).unlink(missing_ok=True)


def report_set_aside(moved: list[SetAside]) -> None:
    for one in moved:
        fields = {
            "earlier_job_id": one.owner.id,
            "earlier_result_file": as_text(str(one.path)),
        }
        if one.kept_as is not None:
            log.info(
                "an earlier document's result file kept under another name",
                kept_as=as_text(str(one.kept_as)),
                **fields,
            )
        else:
            log.info("an earlier document's result file replaced", **fields)
