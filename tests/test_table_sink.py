"""Result tables: one row per finished document, after repeated kill -9, and a database that
refuses rows leaves its documents waiting, never lost."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
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

from watcher.emulator import EmulatorServer
from watcher.jobs import JobState
from watcher.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("api_keys")]


@pytest.fixture
def execution_seconds() -> float:
    return 0.3


def with_table(config: Path, name: str, url: str = "") -> Path:
    table = f"\n[pipelines.table]\nname = {json.dumps(name)}\nurl = {json.dumps(url)}\n"
    config.write_text(config.read_text().replace("\n[pipelines.api]", table + "\n[pipelines.api]"))
    return config


def table_rows(db_url: str, name: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM {name} ORDER BY id")).mappings().all()
    finally:
        engine.dispose()
    return [dict(row) for row in rows]


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # SQLite gives JSON text


def test_one_row_per_finished_document_after_repeated_kill_9(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    results = tmp_path / "results"
    config = write_config(
        tmp_path, deployment_url(server), db_url, pipeline={"output_dir": str(results)}
    )
    with_table(config, "invoices")
    documents = drop_documents(tmp_path / "drop", 150)
    kill_9_repeatedly(config, times=5, seed=1818)
    finished = subprocess.run(
        daemon_command(config, once=True), env=environment(), capture_output=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = table_rows(db_url, "invoices")
    assert sorted((r["source"], r["sha256"]) for r in rows) == sorted(documents.items())
    for row in rows:
        document = json.loads((results / f"{row['source']}.json").read_text())
        assert row["status"] == "success" and row["pipeline"] == "docs"
        assert row["execution_id"] == document["execution_id"]
        assert as_json(row["result"]) == document["result"]
        assert row["finished_at"] is not None


@pytest.mark.usefixtures("quick_write_retries")
def test_a_table_that_refuses_rows_leaves_the_documents_waiting(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    sink_url = f"sqlite:///{tmp_path / 'sink.db'}"
    engine = sa.create_engine(sink_url)
    with engine.begin() as conn:  # a table of that name that cannot take our rows
        conn.exec_driver_sql("CREATE TABLE invoices (id INTEGER PRIMARY KEY, other TEXT)")
    config = with_table(
        write_config(tmp_path, deployment_url(server), db_url), "invoices", sink_url
    )
    (tmp_path / "drop" / "a.txt").write_bytes(b"needs its row")
    with running_daemon(config) as daemon:

        def refused() -> float:
            labels = {"pipeline": "docs", "kind": "table_write"}
            sample = daemon.metrics.registry.get_sample_value
            return sample("unstract_watcher_errors_total", labels) or 0.0

        wait_for(lambda: refused() >= 2, what="two refused writes")
        store = Store(db_url)
        [job] = store.list_jobs()
        assert job.state is JobState.RESULT_STORED  # not done: it waits for its row
        with engine.begin() as conn:  # the operator drops the wrong table
            conn.exec_driver_sql("DROP TABLE invoices")
        wait_for(lambda: store.list_jobs()[0].state is JobState.DONE, what="the document done")
        store.close()
    [row] = table_rows(sink_url, "invoices")
    assert row["source"] == "a.txt" and row["status"] == "success"
    engine.dispose()
