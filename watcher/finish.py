"""The output stage: write the result or error file of every job whose outcome is stored."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from watcher.context import ContextLoop, LastLook, Live
from watcher.crashpoints import crash_point
from watcher.filters import as_text
from watcher.jobs import Job, ResultFile
from watcher.logs import about, get_logger
from watcher.notices import Draft, document_draft
from watcher.output import dispose_source, fsync_folder, result_document, write_result
from watcher.runtime import Pipeline
from watcher.store import StoreError
from watcher.store.table_sink import TableSinks, table_row
from watcher.versions import (
    NewerVersionThere,
    clear_the_way,
    drop_own_kept_copy,
    may_write,
    newest_of,
    report_set_aside,
)
from watcher.write_trouble import WriteTrouble

log = get_logger()
BATCH = 64
IDLE_WAIT_SECONDS = 2.0  # an outcome stored by this process wakes us sooner
# A sole writer (SQLite) stores every outcome itself, each waking us: the wait is a safety net.
SOLE_WRITER_IDLE_WAIT_SECONDS = 10.0
DISK_TROUBLE_WAIT_SECONDS = 5.0
Written = tuple[Job, Pipeline, Path]  # a job, its pipeline, its result file


def _usage_metadata(job: Job, pipeline: Pipeline) -> Any:
    return pipeline.backend.results.usage(job.result_body, job.upload_name)


class Finisher(ContextLoop):
    """The loop that writes result and error files, and counts this process's outcomes."""

    name = "finish"

    def __init__(self, live: Live) -> None:
        super().__init__(live)
        self.notify = live.current.settings.notify  # None: no notices; [notify] takes a restart
        self.sinks = TableSinks(live.current.store)  # result tables, opened when first used
        self.outcomes: Counter[str] = Counter()  # this process's finished jobs, by outcome
        self.last_look = LastLook()  # of the stored outcomes, while idle
        self.trouble = WriteTrouble()  # result folders that refuse files

    def run(self, stop: threading.Event) -> None:
        claim = True  # at start, after a round that wrote, when an outcome woke us
        while not stop.is_set():
            self.wakes.finished.clear()
            self.beat()
            wait = 0.0 if claim else self._idle_wait()  # a wait ran out: is anything there?
            if wait > 0:
                claim = self.wakes.finished.wait(wait)
                continue
            written, troubled = self.finish_stored()
            if troubled:
                stop.wait(DISK_TROUBLE_WAIT_SECONDS)
            claim = bool(written or troubled)
            if not claim:
                claim = self.wakes.finished.wait(self._longest_wait())

    def _longest_wait(self) -> float:
        return SOLE_WRITER_IDLE_WAIT_SECONDS if self.store.sole_writer else IDLE_WAIT_SECONDS

    def _idle_wait(self) -> float:
        """Until a stored outcome may be claimed (its lease ran out), at most the longest
        wait; an outcome this process stores wakes us sooner. On SQLite the table is asked
        only when someone committed since the last look."""

        def ask(pipelines: list[str]) -> float | None:
            return self.store.next_result_due_in(self.owner, pipelines)

        due_in = self.due_in(self.last_look, ask, list(self.pipelines))
        longest = self._longest_wait()
        return longest if due_in is None else min(longest, max(0.0, due_in))

    def finish_stored(self) -> tuple[int, int]:
        """Write files for stored outcomes; return (finished, could not write).

        A batch at a time: every file written, each folder synced once, the sources kept,
        moved or deleted, then all marked finished in one transaction. A crash in between
        writes the same files again after the restart.
        """
        claimed = self.store.claim_stored_results(self.owner, BATCH, list(self.pipelines))
        try:
            written, unwritten = self._finish(claimed)
            self.trouble.round_ended(len(claimed), {target.parent for _, _, target in written})
            self.metrics.results_round(
                [j.pipeline for j in claimed], [j.pipeline for j in unwritten]
            )
            # Stored still, for the next round (or another instance): a plain end of the
            # claim, not one whose answer the database lost.
            self.store.give_back_results(unwritten)
            return len(written), len(unwritten)
        finally:  # after an error: their leases run out, and they are taken again
            self.store.let_go(claimed)

    def _finish(self, claimed: list[Job]) -> tuple[list[Written], list[Job]]:
        written: list[Written] = []
        unwritten: list[Job] = []
        superseded: list[tuple[Job, Pipeline]] = []  # the pipeline as classified: a reload
        newest = newest_of(self.store.newest_finished_versions(claimed), claimed)
        for job in claimed:
            pipeline = self.pipelines.get(job.pipeline)
            if pipeline is None:  # removed by a reload; its jobs wait for it
                continue
            if not may_write(job.version, newest[(job.pipeline, job.relative_path)]):
                superseded.append((replace(job, result_file=ResultFile.SUPERSEDED), pipeline))
                continue
            with about(job):
                try:
                    target = self._write(job, pipeline)
                except NewerVersionThere:
                    superseded.append((replace(job, result_file=ResultFile.SUPERSEDED), pipeline))
                    continue
            if target is None:
                unwritten.append(job)
            else:
                written.append((job, pipeline, target))
        unsynced = self._sync_folders({target.parent for _, _, target in written})
        synced = [entry for entry in written if entry[2].parent not in unsynced]
        refused = self._write_rows(synced)  # their documents wait, as for a full disk
        kept = [entry for entry in synced if entry[0].id not in refused]
        finished = {job.id for job, _, _ in kept}
        unwritten += [job for job, _, _ in written if job.id not in finished]
        disposals = [self._dispose(job, pipeline) for job, pipeline, _ in kept]
        finishing = [job for job, _, _ in kept] + [job for job, _ in superseded]
        self.store.mark_finished_many(finishing, self._notices(kept))
        # Came back at their paths while we held them (A -> B -> A): written after all.
        if self.store.revive_newest_superseded([job for job, _ in superseded]):
            self.wakes.finished.set()
        for (job, pipeline, target), disposal in zip(kept, disposals, strict=True):
            with about(job):
                self._report(job, pipeline, target, disposal)
        for job, pipeline in superseded:
            with about(job):
                self._report_superseded(job, pipeline)
        return kept, unwritten

    def _report_superseded(self, job: Job, pipeline: Pipeline) -> None:
        self.outcomes[job.outcome or "failed"] += 1
        self._count(job, pipeline)
        log.info(
            "a newer version's result is already written; this one stays in the job table",
            outcome=job.outcome,
        )

    def _write_rows(self, written: list[Written]) -> set[int]:
        """Each pipeline's result-table rows; return the jobs whose rows were refused."""
        refused: set[int] = set()
        now = self.store.clock()
        for name in {pipeline.name for _, pipeline, _ in written}:
            mine = [(job, p) for job, p, _ in written if p.name == name]
            table = mine[0][1].config.table
            if table is None:
                continue
            rows = [table_row(job, result_document(job, p.backend.results), now) for job, p in mine]
            try:
                self.sinks.write(table, rows)
            except StoreError as exc:
                log.error(
                    "the result table refused rows; the documents wait and are retried",
                    pipeline=name,
                    error=str(exc),
                )
                self.metrics.errors.labels(name, "table_write").inc()
                refused.update(job.id for job, _ in mine)
        return refused

    def _notices(self, written: list[Written]) -> dict[int, Draft]:
        """The notice of each finished job, if any: written with its change of state."""
        if self.notify is None:
            return {}
        drafts = {
            job.id: document_draft(
                job, result_document(job, pipeline.backend.results), target, self.notify.on_success
            )
            for job, pipeline, target in written
        }
        return {job_id: draft for job_id, draft in drafts.items() if draft is not None}

    def _sync_folders(self, folders: set[Path]) -> set[Path]:
        """fsync each folder (the renames in it become durable); return those that failed,
        whose jobs stay stored and are written again later."""
        failed = set()
        for folder in folders:
            try:
                fsync_folder(folder)
            except OSError as exc:  # the folder vanished, or the file system refuses
                self.trouble.failed(folder, f"cannot sync the folder: {exc.strerror or exc}")
                failed.add(folder)
        return failed

    def _write(self, job: Job, pipeline: Pipeline) -> Path | None:
        self.last_beat = time.monotonic()
        placement = pipeline.placement
        try:
            set_aside = clear_the_way(
                job,
                placement,
                pipeline.config.on_reused_name,
                partial(self.store.content_at_path, job),
                self.store.set_result_files,
                pipeline.backend.results.side_suffixes,
            )
            target = write_result(job, placement, pipeline.backend.results, sync_folder=False)
            drop_own_kept_copy(job, placement)
        except OSError as exc:
            # Disk full, folder gone, no permission: the outcome stays stored; try again later.
            # Said once per folder and error (self.trouble); per file only at debug.
            log.debug("cannot write the result file; will retry", error=str(exc))
            folder = pipeline.placement.result_path(job).parent
            self.trouble.failed(folder, exc.strerror or str(exc))
            self.metrics.errors.labels(pipeline.name, "result_write").inc()
            return None
        report_set_aside(set_aside)
        return target

    @staticmethod
    def _dispose(job: Job, pipeline: Pipeline) -> str:
        try:
            disposal = dispose_source(job, pipeline.placement)
        except OSError as exc:
            disposal = f"left in place ({exc.strerror})"
        crash_point("after_dispose")
        return disposal

    def _report(self, job: Job, pipeline: Pipeline, target: Path, disposal: str) -> None:
        self.outcomes[job.outcome or "failed"] += 1
        self._count(job, pipeline)
        if job.outcome == "success":
            log.info("result written", result_file=as_text(str(target)), source=as_text(disposal))
        else:
            log.warning(
                "error file written", result_file=as_text(str(target)), error=job.last_error
            )

    def _count(self, job: Job, pipeline: Pipeline) -> None:
        outcome = job.outcome or "failed"
        self.metrics.results.labels(pipeline.name, outcome).inc()
        self.metrics.latency.labels(pipeline.name).observe(max(0.0, time.time() - job.created_at))
        if outcome == "failed":
            self.metrics.errors.labels(pipeline.name, "document_failed").inc()
        else:
            self.metrics.record_usage(pipeline.name, _usage_metadata(job, pipeline))
