"""A tree of processed documents, grown cheaply to the restart test's size.

The daemon really processes a few thousand documents (the memory scenario's, or a seed run of
`run --once`). Their job rows, result files and sources are then copied to reach 50 000: each
copy is a new source file with its own content, a job row cloned from a real `done` row (its
path, sha256, size, mtime and execution id replaced; every other column as the daemon wrote it)
and a result file cloned from a real one. Columns are read from the table itself, so the copy
follows schema changes. Processing 50 000 documents through the daemon would take far longer
than the benchmark's budget; what a restart reads (rows, sources, result files) is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from harness import DOC_BYTES, Layout

FOLDER_DOCS = 1000  # documents per subfolder, as a busy drop folder would be organised


@dataclass(frozen=True)
class Clone:
    relative_path: str
    sha256: str
    size: int
    mtime_ns: int
    execution_id: str


def grow(layout: Layout, target: int) -> int:
    """Add cloned processed documents until the job table holds `target` rows; return added."""
    with closing(sqlite3.connect(layout.db_path)) as db:
        db.row_factory = sqlite3.Row
        have = int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
        if have >= target:
            return 0
        template = db.execute(
            "SELECT * FROM jobs WHERE state = 'done' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if template is None:
            raise RuntimeError("no processed (done) job to clone")
        result = _template_result(layout, template["relative_path"])
        clones = list(_write_sources(layout, have, target))
        _write_results(layout, clones, result)
        with db:
            _insert_rows(db, template, clones)
    return len(clones)


def _template_result(layout: Layout, relative_path: str) -> dict[str, Any]:
    path = layout.output_dir / f"{relative_path}.json"
    return dict(json.loads(path.read_text()))


def _write_sources(layout: Layout, start: int, stop: int) -> Iterator[Clone]:
    header = b"%PDF-1.4\n% unstract-watcher benchmark clone\n"
    for index in range(start, stop):
        relative = f"clone-{index // FOLDER_DOCS:03d}/doc-{index:06d}.pdf"
        path = layout.watch_dir / relative
        path.parent.mkdir(exist_ok=True)
        content = (header + os.urandom(DOC_BYTES).hex().encode())[:DOC_BYTES]
        path.write_bytes(content)
        info = path.stat()
        yield Clone(
            relative,
            hashlib.sha256(content).hexdigest(),
            info.st_size,
            info.st_mtime_ns,
            str(uuid.uuid4()),
        )


def _write_results(layout: Layout, clones: list[Clone], template: dict[str, Any]) -> None:
    for clone in clones:
        document = {
            **template,
            "source": clone.relative_path,
            "sha256": clone.sha256,
            "size": clone.size,
            "execution_id": clone.execution_id,
        }
        path = layout.output_dir / f"{clone.relative_path}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


def _insert_rows(db: sqlite3.Connection, template: sqlite3.Row, clones: list[Clone]) -> None:
    columns = [name for name in template.keys() if name != "id"]
    insert = f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    result_row = _result_template(db, template["execution_id"])
    for clone in clones:
        values = {
            **{c: template[c] for c in columns},
            "relative_path": clone.relative_path,
            "relative_path_raw": None,
            "sha256": clone.sha256,
            "size": clone.size,
            "mtime_ns": clone.mtime_ns,
            "execution_id": clone.execution_id,
        }
        job_id = db.execute(insert, [values[c] for c in columns]).lastrowid
        if result_row is not None:
            _insert_result(db, result_row, clone.execution_id, job_id)


def _result_template(db: sqlite3.Connection, execution_id: str) -> sqlite3.Row | None:
    """The `results` row of the template job, if this schema keeps results by execution."""
    table = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'results'")
    if table.fetchone() is None:
        return None
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM results WHERE execution_id = ?", (execution_id,)
    ).fetchone()
    return row


def _insert_result(
    db: sqlite3.Connection, template: sqlite3.Row, execution_id: str, job_id: int | None
) -> None:
    columns = list(template.keys())
    values = {**{c: template[c] for c in columns}, "execution_id": execution_id}
    if "job_id" in values:
        values["job_id"] = job_id
    insert = f"INSERT INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    db.execute(insert, [values[c] for c in columns])
