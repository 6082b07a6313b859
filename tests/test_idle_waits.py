"""Idle, the loops wait long, yet work that no wake-up signals is still noticed in time: jobs
queued by another instance on PostgreSQL are taken up within the lookout's bound, and on
SQLite retries and polls that come due are made when due, not at the end of a long wait. The
main loop and the heartbeat sleep until their next duty: a reload request or a stop rings the
main loop awake, a lease in doubt wakes the heartbeat."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from harness import (
    api_key,
    deployment_url,
    live_context,
    running_daemon,
    wait_for,
    write_config,
)

from watcher import config as config_module
from watcher import crashpoints
from watcher.config import PipelineConfig
from watcher.context import LastLook, Wakes
from watcher.daemon import STATUS_SECONDS, main_tick
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.heartbeat import ORPHAN_CHECK_SECONDS
from watcher.heartbeat import idle_wait as heartbeat_wait
from watcher.jobs import JobState
from watcher.runtime import build_pipeline
from watcher.store import Store
from watcher.submit import MAX_IDLE_SECONDS, Uploader

pytestmark = [pytest.mark.usefixtures("api_keys")]

DOCUMENTS = 8


@pytest.fixture
def execution_seconds() -> float:
    return 0.0


FAILED_POSTS = 2  # retried after at most 2 s, then 4 s (backoff_base_seconds = 2)
SLOW_EXECUTION_SECONDS = 4.0  # longer than any lookout's wait, shorter than the long ones


@pytest.mark.parametrize("execution_seconds", [SLOW_EXECUTION_SECONDS])
@pytest.mark.timeout(120)
def test_on_sqlite_due_retries_and_polls_are_made_on_time(
    tmp_path: Path, server: EmulatorServer, emulator: UnstractEmulator, sqlite_url: str
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path, deployment_url(server), sqlite_url, pipeline={"output_dir": str(results)}
    )
    with running_daemon(config):
        time.sleep(MAX_IDLE_SECONDS)  # let every loop settle into its idle wait
        emulator.set_faults(post_error_before_create=FAILED_POSTS)
        (tmp_path / "drop" / "late.txt").write_bytes(b"retried, then slow\n")
        dropped_at = time.monotonic()
        wait_for(lambda: (results / "late.txt.json").exists(), timeout=60.0, what="the result")
        took = time.monotonic() - dropped_at
    # settle 0.3 s, retries after 2 + 4 s at most, the execution, polls at most 1 s apart.
    assert took < 0.3 + 6.0 + SLOW_EXECUTION_SECONDS + 1.0 + 1.5, took


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_jobs_queued_by_another_instance_are_all_done_within_the_lookouts_bound(
    tmp_path: Path, server: EmulatorServer, postgres_url: str
) -> None:
    config = write_config(
        tmp_path,
        deployment_url(server),
        postgres_url,
        pipeline={"output_dir": str(tmp_path / "results"), "rescan_seconds": 3600.0},
    )
    drop = tmp_path / "drop"
    other_instance = Store(postgres_url)
    try:
        with running_daemon(config, watch_events=False):
            time.sleep(MAX_IDLE_SECONDS)  # let every loop settle into its idle wait
            files = []
            for index in range(DOCUMENTS):
                content = b"queued elsewhere %d\n" % index
                path = drop / f"doc-{index}.txt"
                path.write_bytes(content)
                stat = path.stat()
                sha256 = hashlib.sha256(content).hexdigest()
                files.append((path.name, sha256, stat.st_size, stat.st_mtime_ns))
            queued_at = time.monotonic()
            other_instance.enqueue_many("docs", files)

            def all_done() -> bool:
                jobs = other_instance.list_jobs("docs")
                return len(jobs) == DOCUMENTS and all(j.state == JobState.DONE for j in jobs)

            wait_for(all_done, timeout=30.0, what="the other instance's jobs done")
            took = time.monotonic() - queued_at
    finally:
        other_instance.close()
    # Noticed by the lookout within MAX_IDLE_SECONDS, then the rest at once: a handful of
    # instant executions, polled from 0.1 s, not a helper's long wait per document.
    assert took < MAX_IDLE_SECONDS + 3.0, took


def test_the_idle_main_loop_wakes_only_for_the_watchdog_and_the_status_line() -> None:
    assert main_tick(None) == STATUS_SECONDS  # no watchdog: a check for stuck loops per status
    assert main_tick(0.5) == 0.5  # WatchdogSec=1s: a ping every half second
    assert main_tick(90.0) == STATUS_SECONDS  # WatchdogSec=180 (the unit's): the status's pace


def test_a_reload_request_rings_the_sleeping_main_loop_awake(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), sqlite_url)
    with running_daemon(config, load_settings=lambda: config_module.load(config)) as daemon:
        before, rung = daemon.context, daemon.rounds["rung"]
        daemon.request_reload()  # what SIGHUP's handler does
        wait_for(lambda: daemon.context is not before, what="the reload")
        assert daemon.rounds["rung"] > rung  # the doorbell woke it, not its 10 s timer


def test_a_lease_in_doubt_wakes_the_heartbeat_and_is_looked_at_each_second(
    store: Store,
) -> None:
    assert heartbeat_wait(100.0, next_due=130.0, in_doubt=False) == 30.0  # the next pass
    assert heartbeat_wait(100.0, next_due=99.0, in_doubt=False) == 0.0
    assert heartbeat_wait(100.0, next_due=130.0, in_doubt=True) == ORPHAN_CHECK_SECONDS
    store.enqueue("p", "a.pdf", "a" * 64, 1, 1)
    crashpoints.lose_answer_at("upload_claim")
    try:
        with pytest.raises(sa.exc.OperationalError):
            store.claim_for_upload("me", {"p": 5})
    finally:
        crashpoints.disarm_lost_answers()
    assert store.claims_in_doubt() and store.doubt_raised.is_set()  # the heartbeat's wake
    assert Wakes.for_workers(1, 1, store.doubt_raised).heartbeat is store.doubt_raised


@pytest.mark.parametrize(
    ("seen", "asked", "now", "holds"),
    [
        ((7, ("p",), 0.0, None), (7, ("p",)), 1000.0, True),  # nothing waits, nobody committed
        ((7, ("p",), 0.0, 30.0), (7, ("p",)), 29.9, True),  # a retry comes due at 30
        ((7, ("p",), 0.0, 30.0), (7, ("p",)), 30.0, False),  # ... and now it is due
        ((7, ("p",), 0.0, None), (8, ("p",)), 1.0, False),  # someone committed
        ((7, ("p",), 0.0, None), (7, ("p", "q")), 1.0, False),  # a pipeline more to ask about
        ((None, ("p",), 0.0, None), (None, ("p",)), 1.0, False),  # PostgreSQL: cannot tell
        ((7, ("p",), 0.0, -1.0), (7, ("p",)), 0.0, False),  # due already: look each time
    ],
)
def test_the_last_look_holds_while_nobody_committed_and_nothing_came_due(
    seen: tuple[int | None, tuple[str, ...], float, float | None],
    asked: tuple[int | None, tuple[str, ...]],
    now: float,
    holds: bool,
) -> None:
    look = LastLook()
    assert not look.holds(*asked, now)  # never looked yet
    look.found(*seen)
    assert look.holds(*asked, now) is holds


def test_an_idle_look_asks_the_table_only_after_a_commit_on_sqlite(
    tmp_path: Path, server: EmulatorServer, store: Store, db_url: str
) -> None:
    (tmp_path / "drop").mkdir()
    config = {"name": "p", "watch_dir": str(tmp_path / "drop")}
    api = {"url": deployment_url(server), "api_key": api_key()}
    pipeline = build_pipeline(PipelineConfig.model_validate({**config, "api": api}))
    uploader = Uploader(live_context(store, [pipeline]))
    asked: list[list[str]] = []

    def ask(pipelines: list[str]) -> float | None:
        asked.append(pipelines)
        return store.next_attempt_due_in(pipelines)

    look = LastLook()
    looks_each_time = store.change_mark() is None  # PostgreSQL
    assert uploader.due_in(look, ask, ["p"]) is None and len(asked) == 1
    assert uploader.due_in(look, ask, ["p"]) is None
    assert len(asked) == (2 if looks_each_time else 1)  # SQLite: nobody committed since
    operator = Store(db_url)  # `retry` in a process of its own: a job to upload now
    try:
        operator.enqueue("p", "a.pdf", "a" * 64, 1, 1)
    finally:
        operator.close()
    due = uploader.due_in(look, ask, ["p"])
    assert due is not None and due <= 0.0 and len(asked) == (3 if looks_each_time else 2)
    uploader.due_in(look, ask, ["p"])  # due: the next look asks again (a claim may fail)
    assert len(asked) == (4 if looks_each_time else 3)


def test_the_sweep_reads_when_the_first_lease_runs_out_before_it_writes(store: Store) -> None:
    assert store.next_lease_end_in() is None  # nothing claimed: the sweep has nothing to do
    store.enqueue("p", "a.pdf", "a" * 64, 1, 1)
    assert store.claim_for_upload("me", {"p": 5}) is not None
    ends_in = store.next_lease_end_in()
    assert ends_in is not None and 0 < ends_in <= store.lease_seconds
    assert store.release_claims() == (0, 0)
    store.set_lease_seconds(0.0)  # a claim whose lease runs out at once, as a dead instance's
    store.enqueue("p", "b.pdf", "b" * 64, 1, 1)
    assert store.claim_for_upload("gone", {"p": 5}) is not None
    ended = store.next_lease_end_in()
    assert ended is not None and ended <= 0
    assert store.release_claims() == (1, 0)  # what the sweep then gives back
