"""The watcher's queries: which versions of a folder's paths are known, and queueing new ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from watcher.jobs import JobState
from watcher.store.database import retry_transient
from watcher.store.schema import db_path, fs_path, jobs
from watcher.store.statements import moved
from watcher.store.writes import StoreBase

File = tuple[str, str, int, int]  # relative path, sha256, size, mtime_ns
LOOKUP_BATCH = 500  # paths asked about in one query


@dataclass(frozen=True)
class KnownFile:
    """What the table remembers of the newest version of a path: enough to skip re-hashing."""

    sha256: str
    size: int
    mtime_ns: int

    @property
    def stat_key(self) -> tuple[int, int]:
        """(size, mtime_ns): what says a file is unchanged without reading it."""
        return self.size, self.mtime_ns


class Discovery(StoreBase):
    def known_versions(self, pipeline: str, paths: Sequence[str]) -> dict[str, KnownFile]:
        """The newest version the table knows of each of these paths (a scan asks about a
        folder's worth at a time: the history stays on disk, never all in memory)."""
        found: dict[str, KnownFile] = {}
        for start in range(0, len(paths), LOOKUP_BATCH):
            found.update(self._known_versions(pipeline, paths[start : start + LOOKUP_BATCH]))
        return found

    def _known_versions(self, pipeline: str, paths: Sequence[str]) -> dict[str, KnownFile]:
        texts = {db_path(path)[0] for path in paths}
        with self.db.read() as conn:
            rows = conn.execute(
                self.sql.known_versions, {"b_pipeline": pipeline, "b_paths": sorted(texts)}
            ).all()
        asked = set(paths)
        # In id order: a path's newest version comes last. A name that is not UTF-8 shares
        # its text with others; its raw bytes tell them apart.
        return {
            path: KnownFile(row.sha256, row.size, row.mtime_ns)
            for row in rows
            if (path := fs_path(row.relative_path, row.relative_path_raw)) in asked
        }

    def enqueue(
        self, pipeline: str, relative_path: str, sha256: str, size: int, mtime_ns: int
    ) -> int | None:
        """Queue this content at this path unless it is known; return the job id if queued."""
        return self.enqueue_many(pipeline, [(relative_path, sha256, size, mtime_ns)])[0]

    @retry_transient
    def enqueue_many(
        self, pipeline: str, files: Sequence[File], restored: list[int] | None = None
    ) -> list[int | None]:
        """Queue each (relative path, sha256, size, mtime_ns) unless that content at that path
        is known, in one transaction; return each one's new job id, or None if known.
        `restored` receives the ids of earlier versions whose stored result is to be written
        again (they wait for the finisher, not for an upload).

        A version that was skipped (it vanished or changed before upload) and is back is
        queued again; an earlier content back at its path after another (A -> B -> A)
        becomes its newest version again (`comeback`); any other known version only gets
        its size and mtime refreshed, so the next scan skips it cheaply.
        """
        now = self.clock()
        with self.db.write() as conn:
            # In path order: instances inserting overlapping batches take row locks in the
            # same order, so they wait for each other instead of deadlocking.
            order = sorted(range(len(files)), key=lambda index: files[index][0])
            back: list[int] = []
            ids = {i: self._enqueue_one(conn, pipeline, files[i], now, back) for i in order}
        if restored is not None:
            restored += back
        return [ids[index] for index in range(len(files))]

    def _enqueue_one(
        self, conn: Connection, pipeline: str, file: File, now: float, back: list[int]
    ) -> int | None:
        relative_path, sha256, size, mtime_ns = file
        path, raw = db_path(relative_path)
        values = {
            "pipeline": pipeline,
            "relative_path": path,
            "relative_path_raw": raw,
            "sha256": sha256,
            "size": size,
            "mtime_ns": mtime_ns,
            "state": JobState.QUEUED.value,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        # Another instance watching the same share may insert the same document first.
        row = self.sql.insert_job.run(conn, values, tuple(values)).first()
        if row is not None:
            return int(row[0])
        key = {"b_pipeline": pipeline, "b_path": path, "b_sha256": sha256}
        known = conn.execute(self.sql.known_document, key).first()
        if known is not None and came_back(known.version, known.newest):
            return self._take_back(conn, known, size, mtime_ns, now, back)
        revived = conn.execute(self.sql.revive_skipped, {**key, **_revived(size, mtime_ns, now)})
        if (found := revived.first()) is not None:
            return int(found[0])
        conn.execute(self.sql.refresh_known, {**key, "size": size, "mtime_ns": mtime_ns})
        return None

    @staticmethod
    def _take_back(
        conn: Connection, known: Row[Any], size: int, mtime_ns: int, now: float, back: list[int]
    ) -> int | None:
        """The path's newest version again; its id if it is to be sent (again), else in
        `back` if its stored result is to be written again."""
        values = _comeback_values(known, size, mtime_ns, now)
        same = (jobs.c.id == known.id) & (jobs.c.state == known.state)
        conn.execute(sa.update(jobs).where(same).values(**values))
        if values.get("state") == JobState.RESULT_STORED.value:
            back.append(int(known.id))
        return int(known.id) if values.get("state") == JobState.QUEUED.value else None


def came_back(version: int | None, newest: int | None) -> bool:
    """A known content whose path has held a newer one since (A -> B -> A)."""
    return version is not None and newest is not None and version < newest


def comeback(state: JobState, answer_kept: bool) -> JobState:
    """What an earlier content back at its path becomes: a finished one with its answer
    kept has its result file written again; one whose answer was dropped is sent again;
    any other stays where it is (its result, when it comes, is the newest version's)."""
    if state not in (JobState.DONE, JobState.FAILED):
        return JobState.QUEUED if state is JobState.SKIPPED else state
    return JobState.RESULT_STORED if answer_kept else JobState.QUEUED


def _comeback_values(known: Row[Any], size: int, mtime_ns: int, now: float) -> dict[str, Any]:
    state = JobState(known.state)
    target = comeback(state, bool(known.answer_kept))
    values: dict[str, Any] = {
        "version": known.newest + 1,
        "size": size,
        "mtime_ns": mtime_ns,
        "updated_at": now,
    }
    if target is state:
        return values
    values.update(state=moved(state, target), finished_at=None, result_file=None)
    if target is JobState.QUEUED:
        nothing = ("execution_id", "outcome", "answer_dropped_at", "pack_id")
        values.update(dict.fromkeys(nothing), attempts=0, poll_count=0, last_error="")
        values.update(next_attempt_at=now, alone=False, cost_in_dollars=None)
    return values


def _revived(size: int, mtime_ns: int, now: float) -> dict[str, object]:
    return {
        "state": moved(JobState.SKIPPED, JobState.QUEUED),
        "next_attempt_at": now,
        "last_error": "",
        "size": size,
        "mtime_ns": mtime_ns,
        "finished_at": None,
        "updated_at": now,
    }
