"""The `export` command: one table (CSV or JSONL) of finished documents, read from their result
files, the source of truth once the API's stored answers expire.

Two passes in bounded memory: the first reads each result file once, turns it into a row and
spools the row to an unlinked temp file while it collects the set of columns; the second
writes the header and the spooled rows. Documents whose result file cannot be read are named
to `complain` as they are met, never held in a list.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from watcher.backends import result_format
from watcher.commands import when
from watcher.filters import as_text
from watcher.flatten import cell_text, column_order, cost_in_dollars, result_cells
from watcher.jobs import Job
from watcher.output import Placement, temp_beside
from watcher.store import Store
from watcher.store.finished import finished_jobs

STATES = {"done": ("done",), "failed": ("failed",), "all": ("done", "failed")}


@dataclass(frozen=True)
class Selection:
    """Which documents: by state (done, failed, all), pipeline and finished time."""

    state: str = "all"
    pipeline: str | None = None
    finished_since: float | None = None


@dataclass
class Tally:
    exported: int = 0
    superseded: int = 0  # no file of its own: a newer version's or a later document's
    unreadable: int = 0
    columns: set[str] = field(default_factory=set)


def document_row(job: Job, document: dict[str, Any], result_file: Path) -> dict[str, Any]:
    """One document's row: its own columns, then its result's fields (as the API kind that
    wrote the file flattens them; files beside it are looked for)."""
    row: dict[str, Any] = {
        "pipeline": job.pipeline,
        "source": document.get("source", job.display_path),
        "status": document.get("status"),
        "backend": document.get("backend"),
        "execution_id": document.get("execution_id"),
        "finished_at": when(job.finished_at),
        "cost_in_dollars": cost_in_dollars(document.get("metadata")),
        "error": document.get("error"),
        "sha256": document.get("sha256"),
        "size": document.get("size"),
        "attempts": document.get("attempts"),
        "result_file": as_text(str(result_file)),
    }
    results = result_format(document.get("backend"))
    if results is None:
        row.update(result_cells(document.get("result")))
    else:
        row.update(results.export_cells(document, result_file))
    return row


def read_row(job: Job, placement: Placement) -> dict[str, Any] | str | None:
    """The job's row from its result file; a reason if it cannot be read; None if the file
    now belongs to a newer version of the same path (or it never had one: superseded)."""
    path = placement.file_of(job)
    if path is None:
        return None
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        if _superseded(placement.stale_result_path(job), job):
            return None  # a newer version's file of the other kind replaced it
        return f"no result file {as_text(str(path))}"
    except OSError as exc:
        return f"cannot read {as_text(str(path))}: {exc.strerror}"
    except ValueError:
        return f"{as_text(str(path))} is not valid JSON"
    if not isinstance(document, dict):
        return f"{as_text(str(path))} does not hold a JSON object"
    if document.get("sha256") != job.sha256:
        return None
    return document_row(job, document, path)


def _superseded(other_kind: Path, job: Job) -> bool:
    try:
        document = json.loads(other_kind.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("sha256") != job.sha256


def spool_rows(
    store: Store,
    placements: Mapping[str, Placement],
    selection: Selection,
    spool: IO[str],
    complain: Callable[[str], None],
) -> Tally:
    """Pass one: each selected document's row as a JSON line into `spool`."""
    tally = Tally()
    jobs = finished_jobs(
        store, STATES[selection.state], selection.pipeline, selection.finished_since
    )
    for job in jobs:
        placement = placements.get(job.pipeline)
        row = (
            read_row(job, placement)
            if placement is not None
            else f"pipeline {job.pipeline} is not in the config, so its folders are unknown"
        )
        if row is None:
            tally.superseded += 1
        elif isinstance(row, str):
            tally.unreadable += 1
            complain(f"job {job.id} ({job.pipeline}: {job.display_path}): {row}")
        else:
            tally.exported += 1
            tally.columns.update(row)
            spool.write(json.dumps(row, ensure_ascii=False) + "\n")
    return tally


def write_table(spool: IO[str], columns: list[str], fmt: str, out: TextIO) -> None:
    """Pass two: the header (CSV) and every spooled row, columns in `columns`' order."""
    spool.seek(0)
    rows: Iterator[dict[str, Any]] = (json.loads(line) for line in spool)
    if fmt == "jsonl":
        for row in rows:
            ordered = {c: row[c] for c in columns if c in row}
            out.write(json.dumps(ordered, ensure_ascii=False) + "\n")
        return
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180: CRLF, quotes where needed
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell_text(row.get(c)) for c in columns])


def export(
    store: Store,
    placements: Mapping[str, Placement],
    selection: Selection,
    fmt: str,
    out: TextIO,
    complain: Callable[[str], None],
    spool_dir: Path | None = None,
) -> Tally:
    """Write the table of the selected documents to `out`; return what was done."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", dir=spool_dir) as spool:
        tally = spool_rows(store, placements, selection, spool, complain)
        write_table(spool, column_order(tally.columns), fmt, out)
    return tally


@contextmanager
def output_file(target: Path) -> Iterator[TextIO]:
    """A table file that appears whole or not at all: a temp file beside it, renamed."""
    temp = temp_beside(target, "export")
    try:
        with temp.open("w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def summary_line(tally: Tally) -> str:
    line = f"exported {tally.exported} document(s)"
    if tally.superseded:
        line += (
            f"; {tally.superseded} superseded: a newer version of the path, or (with"
            " on_reused_name = replace) a later document of the name, holds the result file"
        )
    if tally.unreadable:
        line += f"; {tally.unreadable} could not be read (listed above)"
    return line
