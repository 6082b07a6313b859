"""A running pipeline's concurrency (AIMD on 429s) and the signal that wakes upload workers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.config import PipelineConfig
from watcher.context import WorkSignal
from watcher.runtime import Pipeline, build_pipeline
from watcher.unstract import UnstractClient


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    config = PipelineConfig.model_validate(
        {
            "name": "docs",
            "watch_dir": str(tmp_path),
            "api": {
                "url": "https://unstract.example/deployment/api/org_1/invoices/",
                "api_key": "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13",
                "max_in_flight": 8,
            },
        }
    )
    built = build_pipeline(config)
    yield built
    built.backend.close()


def test_a_built_pipeline_starts_at_its_max_in_flight(pipeline: Pipeline) -> None:
    assert isinstance(pipeline.backend, UnstractClient)
    assert pipeline.allowed_in_flight == 8.0
    assert pipeline.in_flight_limit() == 8


def test_each_429_halves_the_limit_down_to_one(pipeline: Pipeline) -> None:
    seen = []
    for _ in range(5):
        pipeline.on_rate_limited()
        seen.append((pipeline.allowed_in_flight, pipeline.in_flight_limit()))
    assert seen == [(4.0, 4), (2.0, 2), (1.0, 1), (1.0, 1), (1.0, 1)]


def test_accepts_grow_the_limit_by_one_over_allowed_up_to_max(pipeline: Pipeline) -> None:
    for _ in range(3):
        pipeline.on_rate_limited()
    pipeline.on_accepted()
    assert pipeline.allowed_in_flight == 2.0  # 1 + 1/1
    pipeline.on_accepted()
    assert pipeline.allowed_in_flight == 2.5  # 2 + 1/2
    assert pipeline.in_flight_limit() == 2  # whole uploads only
    for _ in range(200):
        pipeline.on_accepted()
    assert pipeline.allowed_in_flight == 8.0  # never above max_in_flight
    assert pipeline.in_flight_limit() == 8


def test_growing_back_after_a_halving_takes_about_one_window_of_accepts(
    pipeline: Pipeline,
) -> None:
    pipeline.on_rate_limited()  # 8 -> 4
    accepts = 0
    while pipeline.in_flight_limit() < 8:
        pipeline.on_accepted()
        accepts += 1
    assert 20 <= accepts <= 26  # additive: about one more per limit's worth of accepts


def test_one_set_wakes_one_wait() -> None:
    signal = WorkSignal(workers=4)
    signal.set()
    assert signal.wait(0.01)
    assert not signal.wait(0.01)


def test_pending_wakes_are_capped_at_the_workers() -> None:
    signal = WorkSignal(workers=3)
    for _ in range(10):
        signal.set()
    assert [signal.wait(0.01) for _ in range(4)] == [True, True, True, False]


def test_no_workers_still_keeps_one_wake() -> None:
    signal = WorkSignal(workers=0)
    signal.set()
    signal.set()
    assert [signal.wait(0.01) for _ in range(2)] == [True, False]


def test_wake_all_wakes_every_worker_once() -> None:
    signal = WorkSignal(workers=3)
    signal.wake_all()
    assert [signal.wait(0.01) for _ in range(4)] == [True, True, True, False]


def test_a_set_wakes_a_waiting_worker_before_its_timeout() -> None:
    signal = WorkSignal(workers=2)
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(signal.wait(10.0)))
    waiter.start()
    while not woke and waiter.is_alive():
        signal.set()  # until the waiter has taken it; extra wakes stay capped
        waiter.join(0.01)
    waiter.join(5.0)
    assert woke == [True]


def test_wake_all_wakes_every_waiting_worker() -> None:
    signal = WorkSignal(workers=3)
    woke: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        result = signal.wait(10.0)
        with lock:
            woke.append(result)

    waiters = [threading.Thread(target=worker) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    signal.wake_all()
    for waiter in waiters:
        waiter.join(5.0)
    assert woke == [True, True, True]


def test_probes_ending_side_by_side_lower_the_estimate_one_step(pipeline: Pipeline) -> None:
    pipeline.observe_execution(1.0, None, "e-first")  # the first: at most 1 s
    assert pipeline.expected_execution_seconds == pytest.approx(1.0)
    assert pipeline.probe_for("e-next") == pytest.approx(0.5)  # each probes, far below
    pipeline.observe_execution(0.6, None, "e-next")  # the probe at 0.5 found it ended
    assert pipeline.expected_execution_seconds == pytest.approx(0.5)
    for index in range(20):  # ended by the same first poll round: no further steps
        pipeline.observe_execution(0.55, None, f"e{index}")
    assert pipeline.expected_execution_seconds == pytest.approx(0.5)
    pipeline.observe_execution(1.2, 1.0)  # seen running at 1.0, ended by 1.2: averaged in
    assert pipeline.expected_execution_seconds == pytest.approx(0.5 + 0.2 * (1.1 - 0.5))
