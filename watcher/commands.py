"""The operator's commands: status, jobs list/show, retry, report. Tables for people, --json
for scripts; all safe to run against the database of a live daemon."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watcher.backends import stored_cost
from watcher.config import PipelineConfig
from watcher.files import sha256_of
from watcher.filters import as_text
from watcher.jobs import Job, JobState, ResultFile
from watcher.output import Placement, move_durably
from watcher.store import Store
from watcher.store.operator import (
    RETRYABLE,
    PipelineSummary,
    execution_documents,
    get_job,
    jobs_newest_first,
    retry_jobs,
    summaries,
)
from watcher.store.presence import daemons_now

ERROR_WIDTH = 60  # `jobs list` cuts errors here, unless --full
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REPORT_FIELDS = [
    "id",
    "pipeline",
    "path",
    "state",
    "outcome",
    "attempts",
    "execution_id",
    "sha256",
    "size",
    "created_at",
    "submitted_at",
    "finished_at",
    "updated_at",
    "last_http_status",
    "error",
    "cost_in_dollars",
    "documents_in_execution",
]
# Besides queued and in flight (submitting, submitted, fetching): every state has a column.
COUNTED_STATES = [
    JobState.RESULT_STORED,
    JobState.DONE,
    JobState.FAILED,
    JobState.SKIPPED,
    JobState.HELD,
]


class RetryRefused(Exception):
    """A retry that could only end in `skipped`, or of a job that is not retryable: why."""


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """'90m', '2h', '7d' (ago) or an ISO date/time; None passes through."""
    if not text:
        return None
    match = DURATION.match(text)
    if match:
        return (now or time.time()) - float(match[1]) * UNITS[match[2]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use 30m, 2h, 7d or an ISO date like 2026-11-01"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def status(store: Store, configured: Collection[str], as_json: bool) -> str:
    """Every pipeline of the config, and those with jobs that the config no longer has;
    then whether a daemon holds the database now."""
    found = summaries(store, configured)
    if as_json:
        return json.dumps([s.__dict__ for s in found], indent=2)
    headers = [
        "pipeline",
        "queued",
        "in flight",
        *(s.value for s in COUNTED_STATES),
        "oldest queued (UTC)",
        "paused",
    ]
    rows = [_status_row(s) for s in found]
    return "\n".join([table(headers, rows) if rows else "no jobs yet", _daemons(store)])


def _daemons(store: Store) -> str:
    count = daemons_now(store)
    if count == 0:
        return "daemon: none is running on this database now (nothing is being processed)"
    if store.sole_writer:
        return "daemon: one is running on this database now"
    return f"daemon: {count} running on this database now (sessions named unstract-watcher)"


def _status_row(summary: PipelineSummary) -> list[str]:
    counts = [summary.counts.get(state.value, 0) for state in COUNTED_STATES]
    if not summary.in_config:
        condition = "not in the config any more"
    elif summary.paused_reason:
        condition = f"PAUSED: {summary.paused_reason}"
    else:
        condition = "no"
    in_flight = str(summary.in_flight)
    if summary.in_flight_executions < summary.in_flight:  # documents shared executions
        in_flight += f" in {summary.in_flight_executions} executions"
    return [
        summary.name,
        str(summary.counts.get(JobState.QUEUED.value, 0)),
        in_flight,
        *map(str, counts),
        when(summary.oldest_waiting_since),
        condition,
    ]


def job_record(job: Job) -> dict[str, Any]:
    """One job as scripts see it (and as `report` writes it)."""
    return {
        "id": job.id,
        "pipeline": job.pipeline,
        "path": job.display_path,
        "state": job.state.value,
        "outcome": job.outcome,
        "attempts": job.attempts,
        "execution_id": job.execution_id,
        "sha256": job.sha256,
        "size": job.size,
        "created_at": when(job.created_at),
        "submitted_at": when(job.submitted_at),
        "finished_at": when(job.finished_at),
        "updated_at": when(job.updated_at),
        "last_http_status": job.last_http_status,
        "error": job.last_error,
        "cost_in_dollars": cost_of(job),
    }


def cost_of(job: Job) -> float | None:
    """LLM cost reported by the API for this document (with include_metadata), if any: from
    its stored answer, or as kept when that answer was dropped."""
    return job.cost_in_dollars if job.answer_dropped_at is not None else stored_cost(job)


def jobs_list(store: Store, filters: dict[str, Any], as_json: bool, full: bool = False) -> str:
    """Jobs, newest first; errors cut to ERROR_WIDTH characters unless `full`."""
    found = jobs_newest_first(store, **filters)
    if as_json:
        return json.dumps([job_record(j) for j in found], indent=2)
    errors = [j.last_error or "" for j in found]
    cut = not full and any(len(error) > ERROR_WIDTH for error in errors)
    if cut:
        errors = [_shortened(error) for error in errors]
    rows = [
        [
            str(j.id),
            j.pipeline,
            j.state.value,
            str(j.attempts),
            when(j.updated_at),
            j.display_path,
            error,
        ]
        for j, error in zip(found, errors, strict=True)
    ]
    headers = ["id", "pipeline", "state", "uploads", "updated (UTC)", "path", "last error"]
    if not rows:
        return "no matching jobs"
    hint = ["(errors cut at ... : --full shows them whole, `jobs show ID` one job)"] if cut else []
    return "\n".join([table(headers, rows), *hint])


def _shortened(error: str) -> str:
    return error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 3] + "..."


def jobs_show(
    store: Store, job_id: int, as_json: bool, placements: Mapping[str, Placement] | None = None
) -> str | None:
    """One job, with its stored answer (or when that was dropped) and where its result file
    is (if its pipeline's folders are in `placements`)."""
    job = get_job(store, job_id)
    if job is None:
        return None
    others = [j for j in _sharing(store, [job]).get(job.id, []) if j.id != job.id]
    record = {**job_record(job), **_answer_record(job, (placements or {}).get(job.pipeline))}
    if as_json:
        shared = [{"id": j.id, "path": j.display_path} for j in others]
        return json.dumps(
            {**record, "shares_execution_with": shared, "result_body": job.result_body}, indent=2
        )
    record["shares execution"] = ", ".join(f"{j.id} {j.display_path}" for j in others)
    return "\n".join(
        f"{key:>16}: {'' if value is None else value}" for key, value in record.items()
    )


def _sharing(store: Store, found: list[Job]) -> dict[int, list[Job]]:
    """By job id: every job of its execution (itself included), for jobs that have one."""
    ids = {j.execution_id for j in found if j.execution_id is not None}
    by_execution = execution_documents(store, ids)
    return {j.id: by_execution[j.execution_id] for j in found if j.execution_id is not None}


def _answer_record(job: Job, placement: Placement | None) -> dict[str, Any]:
    ended = job.state in (JobState.DONE, JobState.FAILED)
    if job.answer_dropped_at is not None:
        answer = f"dropped {when(job.answer_dropped_at)} (keep_results_days); see the result file"
    else:
        answer = "kept in the database" if job.result_body is not None else "none"
    return {
        "answer_dropped_at": when(job.answer_dropped_at),
        "stored_answer": answer,
        "result_file": _result_file(job, placement) if ended else None,
        "result_file_note": NO_FILE.get(job.result_file) if ended else None,
    }


NO_FILE: dict[ResultFile | None, str] = {
    ResultFile.SUPERSEDED: "none: a newer version of the path had finished first",
    ResultFile.REPLACED: "none any more: a later document's replaced it (on_reused_name)",
    ResultFile.KEPT: "kept under its job id: a later document took the name",
}


def _result_file(job: Job, placement: Placement | None) -> str | None:
    """Its own result file (kept aside under its job id if a later document took the
    name); None if it has none."""
    found = placement.file_of(job) if placement is not None else None
    return None if found is None else as_text(str(found))


def retry_job(store: Store, pipelines: Mapping[str, PipelineConfig], job_id: int) -> list[str]:
    """Queue one failed, skipped or held job again; return lines saying what was done.
    Raises RetryRefused saying why not."""
    job = get_job(store, job_id)
    if job is None:
        raise RetryRefused(f"no job {job_id}")
    if job.state not in RETRYABLE:
        raise RetryRefused(
            f"job {job_id} is {job.state.value}; only failed, skipped or held jobs can be retried"
        )
    notes = prepare_retry(job, pipelines)
    if not retry_jobs(store, [job.id]):
        raise RetryRefused(f"job {job_id} changed meanwhile; see `jobs show {job_id}`")
    return [*notes, "1 job(s) queued again"]


def retry_pipeline(
    store: Store, pipelines: Mapping[str, PipelineConfig], name: str
) -> tuple[int, list[str]]:
    """Queue every failed job of a pipeline again (held ones only one by one: each may
    already run on the server); return how many, and lines saying what was done."""
    if name not in pipelines:
        raise RetryRefused(f"pipeline {name} is not in the config")
    failed = jobs_newest_first(store, state=JobState.FAILED.value, pipeline=name)
    if not failed:
        return 0, [f"pipeline {name} has no failed jobs"]
    notes, ready = [], []
    for job in failed:
        try:
            notes += prepare_retry(job, pipelines)
        except RetryRefused as exc:
            notes.append(f"not retried: {exc}")
            continue
        ready.append(job.id)
    count = retry_jobs(store, ready) if ready else 0
    return count, [*notes, f"{count} job(s) queued again"]


def prepare_retry(job: Job, pipelines: Mapping[str, PipelineConfig]) -> list[str]:
    """Make sure the upload will find the job's source; notes on what was done."""
    config = pipelines.get(job.pipeline)
    if config is None:
        raise RetryRefused(
            f"job {job.id} belongs to pipeline {job.pipeline}, which is not in the config"
        )
    try:
        note = bring_back(job, config)
    except OSError as exc:
        raise RetryRefused(f"job {job.id}: {exc}") from None
    return [note] if note else []


def bring_back(job: Job, config: PipelineConfig) -> str:
    """With after_success = move, a failed source was moved to archive_dir/failed/ (see
    output.dispose_source): move it back to its place, or refuse when the upload could only
    find no file or other content. Returns what was done ('' if nothing was needed)."""
    source = config.watch_dir.resolve() / job.relative_path
    if source.exists():
        if file_digest(source) == job.sha256:
            return ""
        raise RetryRefused(
            f"job {job.id}: {source} holds other content now (queued as a job of its own)"
        )
    archived = archived_copy(job, config)
    if archived is None:
        raise RetryRefused(
            f"job {job.id}: {source} is gone{_archive_hint(config)}; put the "
            "file back there, then retry"
        )
    source.parent.mkdir(parents=True, exist_ok=True)
    move_durably(archived, source)  # across file systems via a temp name the watcher ignores
    return f"job {job.id}: moved {archived} back to {source}"


def archived_copy(job: Job, config: PipelineConfig) -> Path | None:
    """The job's source in archive_dir/failed/, if it is there with the job's content."""
    if config.after_success != "move" or not isinstance(config.archive_dir, Path):
        return None
    first = config.archive_dir.resolve() / "failed" / job.relative_path
    # dispose_source's name for it when the first one was taken.
    renamed = first.with_name(f"{first.stem}.{job.id}{first.suffix}")
    matches = (p for p in (first, renamed) if p.is_file() and file_digest(p) == job.sha256)
    return next(matches, None)


def _archive_hint(config: PipelineConfig) -> str:
    if config.after_success != "move":
        return ""
    return f" and not in {config.archive_dir}/failed/"


def file_digest(path: Path) -> str:
    return sha256_of(path)[0]


def report(store: Store, filters: dict[str, Any], fmt: str) -> str:
    """Every job, oldest first; `documents_in_execution` says how many documents shared
    its execution (its `execution_id`): 1 when it had one of its own."""
    found = list(reversed(jobs_newest_first(store, **filters)))
    sharing = _sharing(store, found)
    records = [
        {**job_record(j), "documents_in_execution": len(sharing.get(j.id, [])) or None}
        for j in found
    ]
    if fmt == "json":
        return json.dumps(records, indent=2)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS)
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
