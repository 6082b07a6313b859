"""A real PostgreSQL outage while claims are in flight: the server is stopped `-m immediate`
(connections cut mid-transaction) and started again, several times. Every document must
finish without a restart of the daemon, none submitted twice.

A COMMIT whose answer is lost with the connection is rare in a real outage (the window is
the server's commit itself), so a claim of each kind also loses its answer on purpose at its
lost-answer point while the outages go on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from harness import (
    deployment_url,
    results_under,
    running_daemon,
    wait_for,
    write_config,
)
from private_postgres import PrivatePostgres

from watcher import crashpoints
from watcher.daemon import Daemon
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.jobs import JobState

DOCUMENTS = 80
OUTAGES = 6
OUTAGE_SECONDS = 2.0


@pytest.fixture
def execution_seconds() -> float:
    return 0.3


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.close()
        crashpoints.disarm_lost_answers()


def reached(daemon: Daemon, finished: int) -> bool:
    try:
        return daemon.progress().finished >= finished
    except Exception:  # the database is still coming back
        return False


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.usefixtures("api_keys")
def test_every_document_finishes_across_postgresql_outages(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    private_postgres: PrivatePostgres,
) -> None:
    # A lease of 30 s: longer than the test's whole wait, so a lease of ours left stuck (or
    # left to run out) fails it; claims must be given back by the instance itself.
    api = {
        "max_in_flight": 20,
        "connect_timeout_seconds": 5,
        "read_timeout_seconds": 15,
        "poll_initial_seconds": 0.2,
        "poll_max_seconds": 0.5,
    }
    config = write_config(
        tmp_path,
        deployment_url(server),
        private_postgres.url,
        api=api,
        daemon={"upload_workers": 6, "poll_workers": 3},
    )
    drop = tmp_path / "drop"
    for point in ("upload_claim", "poll_claim", "result_claim"):
        crashpoints.lose_answer_at(point, 5)
    with running_daemon(config) as daemon:
        for index in range(DOCUMENTS):
            (drop / f"{index:03}.txt").write_bytes(b"document %d" % index)
        for outage in range(1, OUTAGES + 1):
            # Each outage strikes while the loops are busy: a few more documents done first.
            done = outage * DOCUMENTS // (OUTAGES + 2)
            wait_for(partial(reached, daemon, done), timeout=30, what=f"{done} documents")
            private_postgres.stop_immediately()
            time.sleep(OUTAGE_SECONDS)  # the length of the outage, not a proof of anything
            private_postgres.start()
        wait_for(
            lambda: daemon.progress().finished + daemon.progress().failed >= DOCUMENTS,
            timeout=25,
            what="every document",
        )
        rows = daemon.store.list_jobs()
        assert daemon.failure is None and not daemon.stop_event.is_set()
    assert crashpoints.armed_answer_losses() == []
    assert len(rows) == DOCUMENTS and {j.state for j in rows} == {JobState.DONE}
    results = results_under(drop)
    assert len(results) == DOCUMENTS and {r["status"] for r in results.values()} == {"success"}
    stats = emulator.stats()
    assert stats.executions_created == DOCUMENTS  # none submitted twice
    assert set(stats.posts_by_sha256.values()) == {1}
