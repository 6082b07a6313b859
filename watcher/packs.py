"""Several documents in one execution: which go together, and what the answer means for each.

An Unstract execution may carry up to 32 files and the server's workers run them in parallel
batches (unstract-api-behaviour.md section 12), while the organisation's limit counts
executions. Packing therefore clears a backlog faster; it never delays a lone document. Pure
functions of plain values, like `watcher.jobs`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

from watcher.backend import SubmitKind, SubmitOutcome
from watcher.jobs import Decision, Job, JobState, LogLine, Wake, decide_after_submit
from watcher.schedule import RetryPolicy

# The workers' default MAX_PARALLEL_FILE_BATCHES: an execution of n files takes about
# ceil(n / 4) file times. Learnt execution times are kept per such round of files.
SERVER_FILE_BATCHES = 4


def should_pack(waiting: int, free_slots: int, size: int) -> bool:
    """Pack only for a backlog: more documents wait than the pipeline has free execution
    slots (otherwise each goes at once in an execution of its own)."""
    return size > 1 and waiting > free_slots


def pick_pack(first: Job, candidates: Sequence[Job], size: int) -> list[Job]:
    """Jobs to send with `first` in one execution, at most `size` in all. Never two with the
    same file name (the server drops folders and joins same-name parts into one file) nor
    the same content (it skips the second part); jobs to be sent alone stay out."""
    names, digests = {first.upload_name}, {first.sha256}
    chosen: list[Job] = []
    for job in candidates:
        if len(chosen) + 1 >= size:
            break
        if job.id == first.id or job.alone:
            continue
        if job.upload_name in names or job.sha256 in digests:
            continue
        names.add(job.upload_name)
        digests.add(job.sha256)
        chosen.append(job)
    return chosen


def file_rounds(files: int) -> int:
    """File times an execution of `files` files takes on a server with default batches."""
    return max(1, math.ceil(files / SERVER_FILE_BATCHES))


def decide_after_pack_submit(
    outcome: SubmitOutcome,
    pack: Sequence[Job],
    policy: RetryPolicy,
    rng: random.Random,
    expected: float | None = None,
    probe: float | None = None,
) -> list[Decision]:
    """The decision for each job of one packed upload. The pipeline learns from it once (the
    first decision carries the pipeline change). A refusal of the request (400) cannot say
    which document was at fault: each is sent again alone."""
    if outcome.kind is SubmitKind.DOCUMENT_FAILED and len(pack) > 1:
        line = LogLine(
            "warning",
            "the API refused a packed upload; its documents go again one by one",
            {"error": outcome.error},
        )
        decided = [send_alone(f"the API refused the packed upload: {outcome.error}", line)] * len(
            pack
        )
    else:
        decided = [
            decide_after_submit(outcome, job.attempts, policy, rng, expected, probe) for job in pack
        ]
    return [decided[0], *(replace(d, pipeline_change=None) for d in decided[1:])]


def send_alone(error: str, line: LogLine) -> Decision:
    """Queued again to go in an execution of its own, at once: its attempt counts."""
    return Decision(
        JobState.QUEUED, error=error, alone=True, wakes=frozenset({Wake.UPLOADS}), logs=(line,)
    )
