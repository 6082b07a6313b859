"""structlog set-up: JSON lines for journald and files, readable lines on a terminal.

Context (pipeline, job_id, path, execution_id) is bound with structlog's contextvars where a job
is taken, so every line about a document carries it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

from watcher.filters import as_text

if TYPE_CHECKING:
    from watcher.jobs import Job

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _printable(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Make every string printable: a file name that is not UTF-8 must not kill a loop."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = as_text(value)
    return event


# syslog priorities, which journald reads from a "<N>" line prefix (SyslogLevelPrefix=yes).
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _to_journal() -> bool:
    """stderr is systemd's journal stream (JOURNAL_STREAM names it as device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream != "" and stream == f"{info.st_dev}:{info.st_ino}"


def _with_priority(renderer: Any) -> Any:
    """Prefix each line with its priority, so `journalctl -p err` finds the errors."""

    def render(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        priority = PRIORITIES.get(str(event.get("level", method)), 6)
        return f"<{priority}>{renderer(logger, method, event)}"

    return render


def configure(level: str = "info", log_format: str = "json") -> None:
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    if _to_journal():
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _printable,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # httpx and httpcore log request lines and, at debug, headers: keep them quiet so an API
    # key can never reach the log whatever level the operator picks.
    for name in ("httpx", "httpcore", "watchdog"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger() -> Any:
    return structlog.get_logger("unstract-watcher")


@contextmanager
def about(job: Job, execution_id: str | None = None) -> Iterator[None]:
    """Every log line inside names this job: pipeline, job id, path and execution id (the
    one given, for a job whose row does not hold it yet). Inside `about_execution`, this
    job's lines name it alone; the execution's context is back afterwards."""
    with _bound(
        pipeline=job.pipeline,
        job_id=job.id,
        path=job.display_path,
        execution_id=execution_id or job.execution_id,
    ):
        yield


@contextmanager
def about_execution(jobs: Sequence[Job]) -> Iterator[None]:
    """Lines about a packed execution as a whole name its pipeline, execution and job ids;
    a line about one of its documents is written inside `about(job)`."""
    first = jobs[0]
    with _bound(
        pipeline=first.pipeline,
        execution_id=first.execution_id,
        job_ids=[job.id for job in jobs],
    ):
        yield


@contextmanager
def _bound(**context: Any) -> Iterator[None]:
    """Bind exactly `context`, then give back what was bound before."""
    outer = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**outer)
