"""Webhook notices: each one arrives once, through a receiver that is down for a while, and
across kill -9 of the daemon; signed when a secret is set."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    daemon_command,
    deployment_url,
    drop_documents,
    environment,
    kill_9_repeatedly,
    running_daemon,
    wait_for,
    write_config,
)
from receiver import Receiver

from watcher import config as config_module
from watcher.emulator import DEMO_API, DEMO_ORG, EmulatorServer, UnstractEmulator
from watcher.notices import Draft, Notice, body, slack_text
from watcher.store import Store
from watcher.store.outbox import (
    add_notices,
    claim_due_notices,
    next_notice_due_in,
    pending_notices,
    release_earlier_claims,
)

SECRET = "hook-secret-7f3a"


pytestmark = pytest.mark.usefixtures("api_keys")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.down()


def with_notify(config: Path, receiver: Receiver, on_success: bool) -> Path:
    table = (
        f'\n[notify]\nwebhook_url = "{receiver.url}"\nsecret = "{SECRET}"\n'
        f"on_success = {json.dumps(on_success)}\nretry_max_seconds = 0.5\n"
    )
    config.write_text(config.read_text() + table)
    return config


def outbox(db_url: str) -> list[Notice]:
    store = Store(db_url)
    try:
        return pending_notices(store)
    finally:
        store.close()


def assert_signed(receiver: Receiver) -> None:
    for headers, content in receiver.received:
        digest = hmac.new(SECRET.encode(), content, hashlib.sha256).hexdigest()
        assert headers["X-Unstract-Watcher-Signature"] == f"sha256={digest}"
        assert headers["X-Unstract-Watcher-Delivery"] == str(json.loads(content)["id"])


def test_notices_wait_for_a_receiver_that_is_down_then_arrive_once_each(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    receiver: Receiver,
) -> None:
    emulator.deployment(DEMO_ORG, DEMO_API).fail_glob = "bad*"
    config = with_notify(write_config(tmp_path, deployment_url(server), db_url), receiver, True)
    names = ["good-1.txt", "good-2.txt", "good-3.txt", "bad-1.txt", "bad-2.txt"]
    for name in names:
        (tmp_path / "drop" / name).write_bytes(name.encode())
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 5, what="five documents")
        # The receiver is down: the notices wait in the outbox and are tried again and again.
        wait_for(lambda: sum(n.attempts for n in outbox(db_url)) >= 3, what="failed tries")
        assert len(outbox(db_url)) == 5 and not receiver.received
        receiver.up()
        wait_for(lambda: not outbox(db_url), what="the outbox to empty")
        sample = daemon.metrics.registry.get_sample_value
        tries = [
            sample(
                "unstract_watcher_notices_total",
                {"pipeline": "docs", "event": e, "outcome": "failed"},
            )
            or 0
            for e in ("document_failed", "document_done")
        ]
    notices = receiver.notices()
    assert sorted(n["source"] for n in notices) == sorted(names)  # each once
    assert len({n["id"] for n in notices}) == 5
    events = {n["source"]: n["event"] for n in notices}
    assert {s for s, e in events.items() if e == "document_failed"} == {"bad-1.txt", "bad-2.txt"}
    failed = next(n for n in notices if n["source"] == "bad-1.txt")
    assert "emulated extraction failure" in failed["error"]
    assert failed["result_file"].endswith("bad-1.txt.error.json")
    done = next(n for n in notices if n["source"] == "good-1.txt")
    assert done["result"]["output"]["document"] == "good-1.txt"
    assert_signed(receiver)
    assert sum(tries) >= 3  # the metrics count the tries the receiver refused


def test_a_pause_and_its_end_are_notified_once(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    receiver: Receiver,
) -> None:
    receiver.up()
    emulator.set_faults(unauthorized=True)
    config = with_notify(write_config(tmp_path, deployment_url(server), db_url), receiver, False)
    (tmp_path / "drop" / "a.txt").write_bytes(b"waits for the key")
    with running_daemon(config) as daemon:
        wait_for(lambda: len(receiver.received) == 1, what="the pause notice")
        paused = receiver.notices()[0]
        assert paused["event"] == "pipeline_paused" and "Unauthorized" in paused["reason"]
        emulator.set_faults(unauthorized=False)  # the operator fixes the key, then reloads
        assert daemon.reload(lambda: config_module.load(config))
        wait_for(lambda: daemon.progress().finished == 1, what="the document")
        wait_for(lambda: len(receiver.received) == 2 and not outbox(db_url), what="resumed")
    assert [n["event"] for n in receiver.notices()] == ["pipeline_paused", "pipeline_resumed"]
    assert_signed(receiver)


@pytest.mark.slow
def test_kill_9_neither_loses_nor_repeats_a_notice(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    receiver: Receiver,
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path, deployment_url(server), db_url, pipeline={"output_dir": str(results)}
    )
    with_notify(config, receiver, True)
    documents = drop_documents(tmp_path / "drop", 120)
    # The receiver is down: nothing is on the wire when the kill comes.
    kill_9_repeatedly(config, times=4, seed=18)
    receiver.up()
    process = subprocess.Popen(
        daemon_command(config, once=False),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: len(list(results.rglob("*.json"))) == len(documents),
            timeout=90,
            what="every result",
        )
        wait_for(lambda: not outbox(db_url), timeout=30, what="the outbox to empty")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    sources = Counter(n["source"] for n in receiver.notices())
    assert sources == Counter(set(documents))  # one notice per document, none twice
    assert_signed(receiver)


def test_a_sqlite_daemon_sends_at_once_what_a_killed_one_had_claimed(store: Store) -> None:
    with store.db.write() as conn:
        add_notices(conn, [Draft("document_done", "p", {"source": "a.pdf"})], store.clock())
    assert len(claim_due_notices(store, 10, 120.0)) == 1  # ... and the claimer is killed
    due_in = next_notice_due_in(store)
    assert due_in is not None and due_in > 60
    release_earlier_claims(store)  # the next sender's start
    due_in = next_notice_due_in(store)
    assert due_in is not None
    if store.db.is_sqlite:  # one daemon a file: the claim was a dead process's
        assert due_in <= 0
    else:  # another live instance may hold it: its lease runs out
        assert due_in > 60


def test_slack_format_is_a_message() -> None:
    notice = Notice(
        7, "document_failed", "invoices", {"source": "a.pdf", "error": "bad scan"}, 0, 0.0
    )
    assert json.loads(body(notice, "slack")) == {"text": slack_text(notice)}
    assert "a.pdf" in slack_text(notice) and "bad scan" in slack_text(notice)
    assert json.loads(body(notice, "json"))["id"] == 7
