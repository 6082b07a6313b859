"""Upload workers: what is read from disk, and when a document is given up."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from harness import (
    deployment_url,
    results_under,
    running_daemon,
    sha256,
    wait_for,
    write_config,
)
from test_jobs import job

from watcher.config import load
from watcher.document_stream import DocumentStream, open_document
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.jobs import Decision, Job, JobState
from watcher.store import Store


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
    with _streamed(big, 2001) as document:
        assert b"".join(document.chunks()) == b"x" * 2001


def _open(path: Path, limit: int) -> DocumentStream | Decision:
    return open_document(_job(path), path, limit)


def _streamed(path: Path, limit: int) -> DocumentStream:
    document = _open(path, limit)
    assert isinstance(document, DocumentStream)
    return document


def _job(path: Path) -> Job:
    content = path.read_bytes() if path.is_file() else b""
    digest = hashlib.sha256(content).hexdigest()
    return job(relative_path=path.name, sha256=digest, size=len(content), execution_id=None)


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
        assert daemon.progress().unfinished == 0
    error = results_under(tmp_path / "drop")["a.txt.error.json"]
    assert error["status"] == "failed" and "gave up after 2 attempts" in error["error"]
    assert emulator.stats().posts == 0
