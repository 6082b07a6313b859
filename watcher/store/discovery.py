"""The watcher's queries: which versions of a folder's paths are known, and queueing new ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watcher.jobs import JobState
from watcher.store.database import retry_transient
from watcher.store.schema import db_path, fs_path, jobs
from watcher.store.statements import moved
from watcher.store.writes import StoreBase

File = tuple[str, str, int, int]  # relative path, sha256, size, mtime_ns


@dataclass(frozen=True)
class KnownFile:
    """What the table remembers of the newest version of a path: enough to skip re-hashing."""

    sha256: str
    size: int
    mtime_ns: int


class Discovery(StoreBase):
    def known_files(self, pipeline: str) -> dict[str, KnownFile]:
        """Newest version of every path of a pipeline, for the watcher's change check."""
        columns = (jobs.c.relative_path, jobs.c.relative_path_raw, jobs.c.sha256)
        query = (
            sa.select(*columns, jobs.c.size, jobs.c.mtime_ns)
            .where(jobs.c.pipeline == pipeline)
            .order_by(jobs.c.id)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return {
            fs_path(row.relative_path, row.relative_path_raw): KnownFile(
                row.sha256, row.size, row.mtime_ns
            )
            for row in rows
        }

    def enqueue(
        self, pipeline: str, relative_path: str, sha256: str, size: int, mtime_ns: int
    ) -> int | None:
        """Queue this content at this path unless it is known; return the job id if queued."""
        return self.enqueue_many(pipeline, [(relative_path, sha256, size, mtime_ns)])[0]

    @retry_transient
    def enqueue_many(self, pipeline: str, files: Sequence[File]) -> list[int | None]:
        """Queue each (relative path, sha256, size, mtime_ns) unless that content at that path
        is known, in one transaction; return each one's new job id, or None if known.

        A version that was skipped (it vanished or changed before upload) and is back is
        queued again; any other known version only gets its size and mtime refreshed, so the
        next scan skips it cheaply.
        """
        now = self.clock()
        with self.db.write() as conn:
            # In path order: instances inserting overlapping batches take row locks in the
            # same order, so they wait for each other instead of deadlocking.
            order = sorted(range(len(files)), key=lambda index: files[index][0])
            ids = {i: self._enqueue_one(conn, pipeline, files[i], now) for i in order}
        return [ids[index] for index in range(len(files))]

    def _enqueue_one(self, conn: Connection, pipeline: str, file: File, now: float) -> int | None:
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
        row = conn.execute(self.sql.insert_job, values).first()
        if row is not None:
            return int(row[0])
        key = {"b_pipeline": pipeline, "b_path": path, "b_sha256": sha256}
        revived = conn.execute(self.sql.revive_skipped, {**key, **_revived(size, mtime_ns, now)})
        if (found := revived.first()) is not None:
            return int(found[0])
        conn.execute(self.sql.refresh_known, {**key, "size": size, "mtime_ns": mtime_ns})
        return None


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
