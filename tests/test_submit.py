"""Upload workers: what is read from disk, and when a document is given up."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from harness import (
    api_key,
    deployment_url,
    live_context,
    results_under,
    running_daemon,
    sha256,
    streamed,
    wait_for,
    write_config,
)
from pydantic import SecretStr
from test_jobs import job

from watcher.config import PipelineConfig, load
from watcher.document_stream import READ_BYTES, Abandoned, DocumentStream, open_document
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.jobs import Decision, JobState
from watcher.runtime import Pipeline, build_pipeline
from watcher.store import Store
from watcher.submit import PackedUpload, Uploader
from watcher.unstract import UnstractClient


def test_a_fifo_in_a_documents_place_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "a.pdf"
    os.mkfifo(fifo)
    opened: list[DocumentStream | Decision] = []
    reader = threading.Thread(target=lambda: opened.append(_open(fifo, 1000)), daemon=True)
    reader.start()
    reader.join(5.0)
    assert not reader.is_alive(), "opening a FIFO blocked the worker"
    assert isinstance(opened[0], Decision)
    assert "not a regular file" in opened[0].error


def test_a_file_over_the_limit_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.pdf"
    big.write_bytes(b"x" * 2001)
    refused = _open(big, 2000)
    assert isinstance(refused, Decision) and refused.state is JobState.RESULT_STORED
    assert "2001 bytes, over max_file_bytes = 2000" in refused.error
    with streamed(big, 2001) as document:
        assert b"".join(document.chunks()) == b"x" * 2001


def _open(path: Path, limit: int) -> DocumentStream | Decision:
    """Refused before any byte is read: the job's hash is never compared."""
    return open_document(job(relative_path=path.name), path, limit)


@pytest.mark.usefixtures("api_keys")
def test_a_document_whose_uploads_keep_being_cut_off_is_given_up(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
) -> None:
    """Each crash mid-upload counts an attempt; past max_attempts the document gets an
    error file instead of being sent again after every restart."""
    config = write_config(tmp_path, deployment_url(server), db_url, api={"max_attempts": 2})
    source = tmp_path / "drop" / "a.txt"
    source.write_bytes(b"kills the process\n")
    info = source.stat()
    store = Store(load(config).database.url)
    store.upgrade()
    store.enqueue("docs", "a.txt", sha256(source), info.st_size, info.st_mtime_ns)
    for _ in range(2):  # two uploads cut off by a crash, each taken back by the next start
        assert store.claim_for_upload("test-instance", {"docs": 5}) is not None
        store.release_claims(everything=True)
    store.close()
    with running_daemon(config) as daemon:
        wait_for(lambda: bool(results_under(tmp_path / "drop")), what="the error file")
        # The file is written before the job is marked failed (a crash between the two
        # writes it again): the job ends a moment after its file appears.
        wait_for(lambda: daemon.progress().unfinished == 0, timeout=10, what="the job's end")
    error = results_under(tmp_path / "drop")["a.txt.error.json"]
    assert error["status"] == "failed" and "gave up after 2 attempts" in error["error"]
    assert emulator.stats().posts == 0


def _rewrite_last_byte(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"!")


def _append(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"!")


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 5)


@pytest.mark.parametrize("change", [_rewrite_last_byte, _append, _truncate])
def test_a_document_that_changes_while_it_streams_stops_before_its_last_chunk(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(os.urandom(2 * READ_BYTES + 10))
    given: list[bytes] = []
    with streamed(path, 10**9) as document, pytest.raises(Abandoned) as stopped:
        for chunk in document.chunks():
            given.append(chunk)
            if len(given) == 1:
                change(path)
    assert sum(map(len, given)) < document.size
    decision = stopped.value.decision
    assert decision.state is JobState.SKIPPED and "changed while it was uploaded" in decision.error


def test_an_unchanged_document_streams_whole_and_again(tmp_path: Path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(os.urandom(2 * READ_BYTES + 10))
    with streamed(path, 10**9) as document:
        assert b"".join(document.chunks()) == path.read_bytes()
        assert b"".join(document.chunks()) == path.read_bytes()


URL = "https://unstract.example/deployment/api/org_1/invoices/"


class ChangingServer(httpx.BaseTransport):
    """Reads a request's body as it arrives; `path` changes after the first piece."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        for index, _ in enumerate(request.stream):  # type: ignore[arg-type]
            if index == 0:
                _rewrite_last_byte(self.path)
        return httpx.Response(200, json={"message": {"execution_id": "e1"}})


def _pipeline(drop: Path, transport: httpx.BaseTransport) -> Pipeline:
    api = {"url": URL, "api_key": api_key(), "files_per_execution": 4, "max_in_flight": 1}
    pipeline = build_pipeline(
        PipelineConfig.model_validate({"name": "p", "watch_dir": str(drop), "api": api})
    )
    pipeline.backend.close()
    pipeline.backend = UnstractClient(
        URL,
        SecretStr(api_key()),
        tags=[],
        include_metadata=False,
        connect_timeout=1,
        read_timeout=1,
        max_connections=2,
        files_per_execution=4,
        transport=transport,
    )
    return pipeline


@pytest.mark.parametrize("names", [["b.pdf"], ["a.pdf", "b.pdf", "c.pdf"]])
def test_a_document_changed_while_it_is_sent_is_never_recorded_as_sent(
    tmp_path: Path, store: Store, names: list[str]
) -> None:
    """b.pdf changes once its request has begun: the request is abandoned before its last
    byte, b.pdf is skipped (its new content is queued anew by the watcher), and the other
    documents of a packed upload go back to the queue, their attempt refunded."""
    drop = tmp_path / "drop"
    drop.mkdir()
    for name in names:
        (drop / name).write_bytes(os.urandom(READ_BYTES + 10))
        info = (drop / name).stat()
        store.enqueue("p", name, sha256(drop / name), info.st_size, info.st_mtime_ns)
    server = ChangingServer(drop / "b.pdf")
    pipeline = _pipeline(drop, server)
    uploader = Uploader(live_context(store, [pipeline]))
    claim = store.claim_execution_for_upload("me", {"p": 1}, {"p": 4})
    assert len(claim) == len(names)
    if len(claim) > 1:
        PackedUpload(uploader, pipeline).upload(claim)
    else:
        uploader.upload(claim[0], pipeline, claim_next=False)
    pipeline.backend.close()
    assert server.requests == 1
    states = {j.relative_path: (j.state, j.attempts, j.execution_id) for j in store.list_jobs()}
    assert states.pop("b.pdf") == (JobState.SKIPPED, 1, None)
    assert set(states.values()) <= {(JobState.QUEUED, 0, None)}
    skipped = next(j for j in store.list_jobs() if j.relative_path == "b.pdf")
    assert "changed while it was uploaded" in skipped.last_error
