"""The operator's commands: status, jobs list/show, retry, report. Tables for people, --json
for scripts; all safe to run against the database of a live daemon."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from watcher.jobs import Job
from watcher.store import Store
from watcher.store.operator import get_job, list_jobs, retry_jobs, summaries
from watcher.unstract import find_file_item

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REPORT_FIELDS = [
    "id", "pipeline", "path", "state", "outcome", "attempts", "execution_id", "sha256", "size",
    "created_at", "submitted_at", "updated_at", "last_http_status", "error", "cost_in_dollars",
]  # fmt: skip


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
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def status(store: Store, as_json: bool) -> str:
    found = summaries(store)
    if as_json:
        return json.dumps([s.__dict__ for s in found], indent=2)
    rows = [[s.name, str(s.counts.get("queued", 0)), str(s.in_flight),
             str(s.counts.get("done", 0)), str(s.counts.get("failed", 0)),
             str(s.counts.get("held", 0)), when(s.oldest_waiting_since),
             f"PAUSED: {s.paused_reason}" if s.paused_reason else "running"]
            for s in found]  # fmt: skip
    headers = ["pipeline", "queued", "in flight", "done", "failed", "held", "oldest waiting", ""]
    return table(headers, rows) if rows else "no jobs yet"


def job_record(job: Job) -> dict[str, Any]:
    """One job as scripts see it (and as `report` writes it)."""
    return {
        "id": job.id, "pipeline": job.pipeline, "path": job.display_path,
        "state": job.state.value, "outcome": job.outcome, "attempts": job.attempts,
        "execution_id": job.execution_id, "sha256": job.sha256, "size": job.size,
        "created_at": when(job.created_at), "submitted_at": when(job.submitted_at),
        "updated_at": when(job.updated_at), "last_http_status": job.last_http_status,
        "error": job.last_error, "cost_in_dollars": cost_of(job),
    }  # fmt: skip


def cost_of(job: Job) -> float | None:
    """LLM cost reported by the API for this document (with include_metadata), if any."""
    item = find_file_item(job.result_body, job.upload_name) or {}
    metadata = item.get("metadata")
    usage = metadata.get("usage") if isinstance(metadata, dict) else None
    try:
        return float(usage["cost_in_dollars"]) if isinstance(usage, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def jobs_list(store: Store, filters: dict[str, Any], as_json: bool) -> str:
    found = list_jobs(store, **filters)
    if as_json:
        return json.dumps([job_record(j) for j in found], indent=2)
    rows = [[str(j.id), j.pipeline, j.state.value, str(j.attempts), when(j.updated_at),
             j.display_path, (j.last_error or "")[:60]] for j in found]  # fmt: skip
    headers = ["id", "pipeline", "state", "tries", "updated (UTC)", "path", "last error"]
    return table(headers, rows) if rows else "no matching jobs"


def jobs_show(store: Store, job_id: int, as_json: bool) -> str | None:
    job = get_job(store, job_id)
    if job is None:
        return None
    record = job_record(job)
    if as_json:
        return json.dumps({**record, "result_body": job.result_body}, indent=2)
    return "\n".join(
        f"{key:>16}: {'' if value is None else value}" for key, value in record.items()
    )


def retry(store: Store, job_id: int | None, pipeline: str | None) -> int:
    return retry_jobs(store, job_id=job_id, pipeline=pipeline)


def report(store: Store, filters: dict[str, Any], fmt: str) -> str:
    records = [job_record(j) for j in reversed(list_jobs(store, **filters))]
    if fmt == "json":
        return json.dumps(records, indent=2)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_FIELDS)
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()
