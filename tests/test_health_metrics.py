"""The figures the alerting rules need that /healthz alone told (issue 30): health as a
metric, results that cannot be written, the age of the oldest queued document, the
in-flight limit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from harness import deployment_url, mounted_tmpfs, running_daemon, wait_for, write_config

from watcher.emulator import EmulatorServer
from watcher.metrics import Metrics
from watcher.store import Store

SHA = "a" * 64


def scrape(port: int) -> dict[str, float]:
    """The unlabelled and pipeline="docs" samples of a /metrics page, by metric name."""
    found = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        found[name.replace('{pipeline="docs"}', "")] = float(value)
    return found


@pytest.mark.usefixtures("quick_write_retries", "api_keys")
def test_a_folder_refusing_results_shows_in_the_metrics_until_it_takes_them(
    tmp_path: Path, server: EmulatorServer, sqlite_url: str
) -> None:
    with mounted_tmpfs(tmp_path / "results", "size=1m") as results:
        config = write_config(
            tmp_path,
            deployment_url(server),
            sqlite_url,
            pipeline={"output_dir": str(results)},
            api={"max_in_flight": 3},
        )
        config.write_text(config.read_text() + "\n[metrics]\nenabled = true\nport = 0\n")
        with running_daemon(config) as daemon:
            port = daemon.metrics_server.server_port
            wait_for(lambda: scrape(port).get("unstract_watcher_in_flight_limit") == 3.0)
            healthy = scrape(port)
            subprocess.run(["mount", "-o", "remount,ro", str(results)], check=True)
            (tmp_path / "drop" / "a.txt").write_bytes(b"its result waits for the folder")
            wait_for(
                lambda: scrape(port).get("unstract_watcher_results_unwritten") == 1.0,
                what="the unwritten result in the metrics",
            )
            sick = scrape(port)
            subprocess.run(["mount", "-o", "remount,rw", str(results)], check=True)
            wait_for(lambda: daemon.progress().finished == 1, what="the result file")
            wait_for(lambda: scrape(port)["unstract_watcher_healthy"] == 1.0, what="health")
            well = scrape(port)
    assert healthy["unstract_watcher_healthy"] == 1.0
    assert healthy["unstract_watcher_health_problems"] == 0.0
    assert sick["unstract_watcher_healthy"] == 0.0
    assert sick["unstract_watcher_health_problems"] == 1.0  # results cannot be written
    assert well["unstract_watcher_results_unwritten"] == 0.0
    assert well["unstract_watcher_health_problems"] == 0.0


def test_unwritten_results_follow_the_finisher_rounds_as_health_does() -> None:
    metrics = Metrics()

    def unwritten(name: str) -> float | None:
        labels = {"pipeline": name}
        return metrics.registry.get_sample_value("unstract_watcher_results_unwritten", labels)

    metrics.results_round(["a", "a", "b"], ["a", "a"])
    assert (unwritten("a"), unwritten("b")) == (2.0, 0.0)
    metrics.results_round(["b"], [])  # a round that took none of a's: a keeps its figure
    assert unwritten("a") == 2.0
    metrics.results_round(["a"], [])  # one of a's was written: its folder takes files
    assert unwritten("a") == 0.0
    metrics.results_round(["b"], ["b"])
    metrics.results_round([], [])  # nothing waits to be written: nothing can be wrong
    assert (unwritten("a"), unwritten("b")) == (0.0, 0.0)


def test_the_oldest_queued_document_is_aged_by_the_database_clock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics(store)
    store.enqueue("p", "a.pdf", SHA, 10, 1)
    store.enqueue("p", "b.pdf", "b" * 64, 10, 1)
    created = min(job.created_at for job in store.list_jobs())
    monkeypatch.setattr(store, "clock", lambda: created + 100.0)

    def oldest(name: str) -> float | None:
        labels = {"pipeline": name}
        return metrics.registry.get_sample_value("unstract_watcher_oldest_queued_seconds", labels)

    assert oldest("p") == 100.0
    assert store.claim_for_upload("me", {"p": 10}) and store.claim_for_upload("me", {"p": 10})
    assert oldest("p") == 0.0  # none queued
