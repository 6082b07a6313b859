"""Crash inside a packed upload or poll, lose nothing: the real daemon process killed at
named steps while it sends several documents per execution, then run again."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import (
    crash_then_finish,
    deployment_url,
    drop_documents,
    write_config,
)
from test_crash import assert_each_document_once, explained_repeats

from watcher.emulator import EmulatorServer, UnstractEmulator

pytestmark = pytest.mark.slow


@pytest.fixture
def execution_seconds() -> float:
    return 0.3


@pytest.mark.parametrize(
    ("crash_at", "sent"),
    [
        ("pack_claimed:2", False),  # claimed together, nothing sent yet
        ("after_post:2", True),  # the server runs the execution, its id not yet committed
        ("after_poll:2", True),  # the answer for every document was handed out, not committed
    ],
)
def test_crash_inside_a_packed_execution_then_restart(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    crash_at: str,
    sent: bool,
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        pipeline={"output_dir": str(results)},
        api={"files_per_execution": 4, "max_in_flight": 1},
        daemon={"upload_workers": 1},
    )
    documents = drop_documents(tmp_path / "drop", 12)
    restart_log = crash_then_finish(config, crash_at)
    assert_each_document_once(results, documents)
    executions = emulator.stats().posts_by_sha256
    repeated = sum(executions[digest] - 1 for digest in documents.values())
    explained = explained_repeats(restart_log)
    # Only the documents of the upload on the wire (or whose answer was read but not
    # committed) are sent again, and the restart logs each of them.
    if sent:
        assert repeated == explained and repeated >= 2  # a packed execution's documents
    else:
        assert repeated == 0 and explained >= 2  # queued again, never sent twice
    assert emulator.stats().executions_created < 12 + repeated
