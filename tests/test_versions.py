"""Versions of one path and reused names (issue 31): a path's result file only moves forward,
and no result is lost to a name used again.

Versions finish in the order each test stores their answers, through the real store (SQLite
and PostgreSQL), the real finisher and real files; and, through the daemon, in the order the
emulator ends their executions (EMULATOR-SECONDS in a document sets its run time).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from harness import (
    crash_then_finish,
    daemon_command,
    deployment_url,
    environment,
    live_context,
    running_daemon,
    wait_for,
    write_config,
)

from watcher.commands import jobs_show
from watcher.config import PipelineConfig
from watcher.emulator import EmulatorServer
from watcher.export import Selection, export
from watcher.finish import Finisher
from watcher.jobs import Decision, Job, JobState, ResultFile
from watcher.runtime import Pipeline, build_pipeline
from watcher.store import Store
from watcher.store.operator import get_job
from watcher.versions import may_write, newest_of


def make_pipeline(tmp_path: Path, **options: Any) -> Pipeline:
    (tmp_path / "drop").mkdir(exist_ok=True)
    config = PipelineConfig.model_validate(
        {
            "name": "p",
            "watch_dir": str(tmp_path / "drop"),
            "api": {
                "url": "https://unstract.example/deployment/api/org_1/invoices/",
                "api_key": "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13",
            },
            **options,
        }
    )
    return build_pipeline(config)


Finishing = Callable[..., tuple[Pipeline, Finisher]]


@pytest.fixture
def finishing(store: Store, tmp_path: Path) -> Iterator[Finishing]:
    """A pipeline with these options (its archive in tmp_path/archive), and a finisher."""
    made: list[Pipeline] = []

    def make(**options: str) -> tuple[Pipeline, Finisher]:
        pipeline = make_pipeline(tmp_path, archive_dir=str(tmp_path / "archive"), **options)
        made.append(pipeline)
        return pipeline, Finisher(live_context(store, [pipeline]))

    yield make
    for pipeline in made:
        pipeline.backend.close()


def drop(store: Store, folder: Path, name: str, content: bytes) -> int | None:
    """Write a version of `name` and queue it as discovery would; its job id if queued."""
    path = folder / name
    path.write_bytes(content)
    info = path.stat()
    sha = hashlib.sha256(content).hexdigest()
    return store.enqueue("p", name, sha, info.st_size, info.st_mtime_ns)


def submit_all(store: Store) -> dict[int, Job]:
    """Every queued job uploaded; its execution running (by job id)."""
    while (job := store.claim_for_upload("me", {"p": 50})) is not None:
        store.record_submit(job, Decision(JobState.SUBMITTED, 0.0, execution_id=f"e-{job.id}"), 200)
    return {job.id: job for job in store.claim_due_polls("me", 50, ["p"])}


def answer(store: Store, polled: Job) -> None:
    """The job's execution ends: its answer is stored."""
    body = {
        "status": "COMPLETED",
        "message": [{"file": polled.file_name, "status": "Success", "result": {"job": polled.id}}],
    }
    store.record_poll(polled, Decision(JobState.RESULT_STORED, outcome="success"), 200, body)


def finished_version(store: Store, finisher: Finisher, path: Path, content: bytes) -> int:
    """A version of `path` dropped, sent, answered and its result file written."""
    job_id = drop(store, path.parent, path.name, content)
    assert job_id is not None
    answer(store, submit_all(store)[job_id])
    assert finisher.finish_stored() == (1, 0)
    return job_id


def described(path: Path) -> str:
    document: dict[str, Any] = json.loads(path.read_bytes())
    return str(document["sha256"])


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def exported(store: Store, pipeline: Pipeline) -> list[str]:
    out = io.StringIO()
    export(store, {"p": pipeline.placement}, Selection(), "jsonl", out, pytest.fail)
    return [row["result_file"] for row in map(json.loads, out.getvalue().splitlines())]


def shown(store: Store, job_id: int, pipeline: Pipeline) -> str:
    """`jobs show`'s result file, or the note saying why there is none."""
    record = jobs_show(store, job_id, True, {"p": pipeline.placement})
    assert record is not None
    shown = json.loads(record)
    return str(shown["result_file"] or shown["result_file_note"])


@pytest.mark.parametrize("after_success", ["delete", "move"])
def test_versions_finishing_out_of_order_leave_the_newest_result(
    store: Store, tmp_path: Path, finishing: Finishing, after_success: str
) -> None:
    archive = tmp_path / "archive"
    pipeline, finisher = finishing(after_success=after_success)
    drop_dir = tmp_path / "drop"
    versions = [b"version A", b"version B, longer", b"version C, the longest"]
    ids = [drop(store, drop_dir, "a.pdf", content) for content in versions]
    running = submit_all(store)
    a, b, c = (running[job_id] for job_id in ids if job_id is not None)

    answer(store, a)  # A ends first: its file, but C is on disk: not disposed of
    assert finisher.finish_stored() == (1, 0)
    assert (drop_dir / "a.pdf").read_bytes() == versions[2]
    answer(store, c)  # C, the newest, ends next: its file, and C goes
    assert finisher.finish_stored() == (1, 0)
    answer(store, b)  # B's late answer: no file, and nothing disposed of
    finisher.finish_stored()

    assert described(drop_dir / "a.pdf.json") == sha(versions[2])
    assert not (drop_dir / "a.pdf").exists()
    if after_success == "move":
        assert (archive / "processed" / "a.pdf").read_bytes() == versions[2]
        assert not (archive / "processed" / f"a.{b.id}.pdf").exists()
    late = get_job(store, b.id)
    assert late is not None and late.state is JobState.DONE
    assert late.result_file is ResultFile.SUPERSEDED
    assert "newer version" in shown(store, b.id, pipeline)
    assert shown(store, c.id, pipeline) == str(drop_dir / "a.pdf.json")
    # A's result, kept aside when C's took the name; B's only in the job table.
    assert exported(store, pipeline) == [
        str(drop_dir / f"a.pdf.{a.id}.json"),
        shown(store, c.id, pipeline),
    ]


def test_an_earlier_content_back_at_its_path_is_described_again(
    store: Store, tmp_path: Path, finishing: Finishing
) -> None:
    pipeline, finisher = finishing(after_success="delete")
    drop_dir = tmp_path / "drop"
    first = finished_version(store, finisher, drop_dir / "a.pdf", b"content A")
    second = finished_version(store, finisher, drop_dir / "a.pdf", b"content B")
    assert described(drop_dir / "a.pdf.json") == sha(b"content B")

    # A is back: not queued (its answer is kept), yet written again and the source deleted.
    assert drop(store, drop_dir, "a.pdf", b"content A") is None
    assert finisher.finish_stored() == (1, 0)
    assert described(drop_dir / "a.pdf.json") == sha(b"content A")
    assert not (drop_dir / "a.pdf").exists()
    assert described(drop_dir / f"a.pdf.{second}.json") == sha(b"content B")
    assert not (drop_dir / f"a.pdf.{first}.json").exists()  # no second copy of A's answer
    assert shown(store, first, pipeline) == str(drop_dir / "a.pdf.json")


def test_an_earlier_content_back_whose_answer_was_dropped_is_sent_again(store: Store) -> None:
    first = store.enqueue("p", "a.pdf", sha(b"A"), 1, 1)
    assert first is not None
    answer(store, submit_all(store)[first])
    [stored] = store.claim_stored_results("me", 10, ["p"])
    store.mark_finished(stored)
    assert store.drop_expired_answers(-1.0, lambda _: None) == 1
    second = store.enqueue("p", "a.pdf", sha(b"B"), 2, 2)
    assert second is not None
    assert store.enqueue("p", "a.pdf", sha(b"A"), 1, 3) == first  # queued again
    again = get_job(store, first)
    assert again is not None and again.state is JobState.QUEUED and again.execution_id is None
    assert store.enqueue("p", "a.pdf", sha(b"A"), 1, 3) is None  # once


def test_an_earlier_content_back_with_its_answer_is_named_for_the_finisher(
    store: Store,
) -> None:
    first = store.enqueue("p", "a.pdf", sha(b"A"), 1, 1)
    assert first is not None
    answer(store, submit_all(store)[first])
    [stored] = store.claim_stored_results("me", 10, ["p"])
    store.mark_finished(stored)
    assert store.enqueue("p", "a.pdf", sha(b"B"), 2, 2) is not None
    restored: list[int] = []  # the watcher wakes the finisher for these
    assert store.enqueue_many("p", [("a.pdf", sha(b"A"), 1, 3)], restored) == [None]
    assert restored == [first]
    again = get_job(store, first)
    assert again is not None and again.state is JobState.RESULT_STORED
    restored.clear()
    assert store.enqueue_many("p", [("a.pdf", sha(b"A"), 1, 3)], restored) == [None]
    assert restored == []  # once


@pytest.mark.parametrize("after_success", ["keep", "move"])
def test_a_reused_name_keeps_the_earlier_result(
    store: Store,
    tmp_path: Path,
    finishing: Finishing,
    after_success: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    archive = tmp_path / "archive"
    pipeline, finisher = finishing(after_success=after_success)
    drop_dir = tmp_path / "drop"
    first = finished_version(store, finisher, drop_dir / "scan_0001.pdf", b"the first scan")
    (drop_dir / "scan_0001.pdf").unlink(missing_ok=True)  # taken away (or moved)
    second = finished_version(
        store, finisher, drop_dir / "scan_0001.pdf", b"the second scan, another page"
    )

    kept = drop_dir / f"scan_0001.pdf.{first}.json"
    newest = drop_dir / "scan_0001.pdf.json"
    assert described(kept) == sha(b"the first scan")
    assert described(newest) == sha(b"the second scan, another page")
    assert shown(store, first, pipeline) == str(kept)
    assert shown(store, second, pipeline) == str(newest)
    assert exported(store, pipeline) == [str(kept), str(newest)]
    assert "kept under another name" in capsys.readouterr().out
    if after_success == "move":  # each archived version matches its result by name
        archived = archive / "processed"
        assert (archived / f"scan_0001.{first}.pdf").read_bytes() == b"the first scan"
        assert (archived / "scan_0001.pdf").read_bytes() == b"the second scan, another page"


def test_a_reused_name_replaces_when_the_pipeline_says_so(
    store: Store, tmp_path: Path, finishing: Finishing
) -> None:
    pipeline, finisher = finishing(on_reused_name="replace")
    drop_dir = tmp_path / "drop"
    first = finished_version(store, finisher, drop_dir / "scan.pdf", b"the first scan")
    finished_version(store, finisher, drop_dir / "scan.pdf", b"the second scan")
    assert sorted(p.name for p in drop_dir.iterdir()) == ["scan.pdf", "scan.pdf.json"]
    assert "replaced" in shown(store, first, pipeline)
    assert exported(store, pipeline) == [str(drop_dir / "scan.pdf.json")]


def test_a_version_may_write_unless_a_newer_one_has() -> None:
    assert may_write(3, None) and may_write(3, 2) and may_write(3, 3)
    assert not may_write(2, 3)
    assert may_write(None, 3)  # a row from before versions were kept


def test_the_newest_version_is_per_path(store: Store) -> None:
    for index, path in enumerate(["a.pdf", "a.pdf", "b.pdf", "c.pdf"]):
        store.enqueue("p", path, f"{index:064d}", 1, 1)
    finished = {("p", "b.pdf"): 5}  # finished before: b.pdf's job is superseded
    newest = newest_of(finished, store.list_jobs("p"))
    assert newest == {("p", "a.pdf"): 2, ("p", "b.pdf"): 5, ("p", "c.pdf"): 1}


@pytest.mark.usefixtures("api_keys")
@pytest.mark.parametrize("after_success", ["delete", "move"])
def test_versions_racing_through_the_daemon_leave_the_newest_result(
    tmp_path: Path, server: EmulatorServer, db_url: str, after_success: str
) -> None:
    """Rewritten while earlier versions run; the emulator ends them newest first."""
    archive = tmp_path / "archive"
    options = {"after_success": after_success, "archive_dir": str(archive)}
    config = write_config(tmp_path, deployment_url(server), db_url, pipeline=options)
    document = tmp_path / "drop" / "a.txt"
    versions = [b"A EMULATOR-SECONDS=3", b"B. EMULATOR-SECONDS=2", b"C.. EMULATOR-SECONDS=0.1"]
    with running_daemon(config) as daemon:
        for number, content in enumerate(versions, 1):
            document.write_bytes(content)
            wait_for(partial(sent, daemon.store, number), what=f"version {number} sent")
        wait_for(lambda: daemon.progress().finished == 3, what="every version finished")
    assert described(tmp_path / "drop" / "a.txt.json") == sha(versions[2])
    assert not document.exists()
    if after_success == "move":
        assert (archive / "processed" / "a.txt").read_bytes() == versions[2]


def sent(store: Store, versions: int) -> bool:
    return sum(job.execution_id is not None for job in store.list_jobs()) >= versions


@pytest.mark.usefixtures("api_keys")
@pytest.mark.parametrize("crash_at", ["after_archive_aside", "after_set_aside"])
def test_a_crash_while_an_earlier_result_is_set_aside_loses_nothing(
    tmp_path: Path, server: EmulatorServer, db_url: str, crash_at: str
) -> None:
    archive = tmp_path / "archive"
    options = {"after_success": "move", "archive_dir": str(archive)}
    config = write_config(tmp_path, deployment_url(server), db_url, pipeline=options)
    document = tmp_path / "drop" / "scan.txt"
    document.write_bytes(b"the first scan")
    first = subprocess.run(daemon_command(config, once=True), env=environment(), timeout=60)
    assert first.returncode == 0
    document.write_bytes(b"the second scan, another page")
    crash_then_finish(config, crash_at)

    drop_dir, processed = tmp_path / "drop", archive / "processed"
    assert described(drop_dir / "scan.txt.json") == sha(b"the second scan, another page")
    assert described(drop_dir / "scan.txt.1.json") == sha(b"the first scan")
    assert (processed / "scan.txt").read_bytes() == b"the second scan, another page"
    assert (processed / "scan.1.txt").read_bytes() == b"the first scan"
    store = Store(db_url)
    try:
        places = {job.id: job.result_file for job in store.list_jobs()}
    finally:
        store.close()
    assert places == {1: ResultFile.KEPT, 2: ResultFile.AT_PATH}


def test_a_reused_name_keeps_the_earlier_documents_text_file_too(
    store: Store, tmp_path: Path
) -> None:
    """LLMWhisperer with write_text_file: a.pdf.json and a.pdf.txt are one result; the
    earlier document's pair is kept aside as a.pdf.<id>.json and a.pdf.<id>.txt."""
    drop_dir = tmp_path / "drop"
    pipeline = make_pipeline(
        tmp_path,
        api={
            "kind": "llmwhisperer",
            "url": "https://llmwhisperer.example/api/v2",
            "api_key": "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13",
            "write_text_file": True,
        },
    )
    finisher = Finisher(live_context(store, [pipeline]))
    try:
        ids = []
        for content in (b"first scan", b"second scan"):
            job_id = drop(store, drop_dir, "a.pdf", content)
            assert job_id is not None
            polled = submit_all(store)[job_id]
            body = {"result_text": f"text of {content.decode()}", "confidence_metadata": []}
            store.record_poll(
                polled, Decision(JobState.RESULT_STORED, outcome="success"), 200, body
            )
            assert finisher.finish_stored() == (1, 0)
            ids.append(job_id)
    finally:
        pipeline.backend.close()
    first, _second = ids
    assert (drop_dir / "a.pdf.txt").read_text() == "text of second scan"
    assert (drop_dir / f"a.pdf.{first}.txt").read_text() == "text of first scan"
    assert described(drop_dir / f"a.pdf.{first}.json") == sha(b"first scan")
    assert described(drop_dir / "a.pdf.json") == sha(b"second scan")


def test_an_earlier_content_back_while_the_finisher_holds_it_is_written_after_all(
    store: Store, tmp_path: Path, finishing: Finishing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's late answer is being finished (superseded by B's file) when A comes back: it is
    the path's newest version after all, so its result is written and its source deleted."""
    pipeline, finisher = finishing(after_success="delete")
    drop_dir = tmp_path / "drop"
    first = drop(store, drop_dir, "a.pdf", b"content A")
    second = drop(store, drop_dir, "a.pdf", b"content B")
    assert first is not None and second is not None
    running = submit_all(store)
    answer(store, running[second])
    assert finisher.finish_stored() == (1, 0)  # B's file
    answer(store, running[first])  # A's late answer: superseded when finished

    real = store.newest_finished_versions

    def meanwhile_a_comes_back(batch: list[Job]) -> dict[tuple[str, str], int]:
        # The finisher holds A's job now; discovery sees A back at the path (a real
        # concurrent scan cannot be timed into this gap from a test).
        monkeypatch.setattr(store, "newest_finished_versions", real)
        assert drop(store, drop_dir, "a.pdf", b"content A") is None
        return real(batch)

    monkeypatch.setattr(store, "newest_finished_versions", meanwhile_a_comes_back)
    assert finisher.finish_stored() == (0, 0)  # superseded by the snapshot it took ...
    assert finisher.finish_stored() == (1, 0)  # ... and written after all
    assert described(drop_dir / "a.pdf.json") == sha(b"content A")
    assert not (drop_dir / "a.pdf").exists()  # not left in the inbox
    assert described(drop_dir / f"a.pdf.{second}.json") == sha(b"content B")
    assert shown(store, first, pipeline) == str(drop_dir / "a.pdf.json")


def test_an_older_version_never_moves_a_newer_ones_file_aside(
    store: Store, tmp_path: Path, finishing: Finishing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's file is at the path, but the finisher did not see B finished (another instance
    wrote it and has not marked its row yet): A's late answer is superseded by the file."""
    pipeline, finisher = finishing()
    drop_dir = tmp_path / "drop"
    first = drop(store, drop_dir, "a.pdf", b"content A")
    second = drop(store, drop_dir, "a.pdf", b"content B")
    assert first is not None and second is not None
    running = submit_all(store)
    answer(store, running[second])
    assert finisher.finish_stored() == (1, 0)  # B's file
    answer(store, running[first])
    # As another instance's finisher would see it before B's row is marked: nothing finished.
    monkeypatch.setattr(store, "newest_finished_versions", lambda batch: {})
    assert finisher.finish_stored() == (0, 0)
    assert described(drop_dir / "a.pdf.json") == sha(b"content B")  # still B's
    assert not (drop_dir / f"a.pdf.{second}.json").exists()
    assert "newer version" in shown(store, first, pipeline)
