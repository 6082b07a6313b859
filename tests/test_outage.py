"""The outage of a pipeline as pure values: probe intervals, and which executions it hid."""

from __future__ import annotations

from watcher.outage import Blind, Outage, probe_gap


def test_probes_wait_twice_as_long_each_time_up_to_the_cap() -> None:
    gaps = [probe_gap(probes, 60.0) for probes in range(9)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert probe_gap(10_000, 5.0) == 5.0  # no overflow after days of probing


def test_each_failed_probe_puts_the_next_one_further_off() -> None:
    outage = Outage.begin("connection refused", now=100.0, clock_now=1.7e9, cap_seconds=60.0)
    assert outage.next_probe_at == 101.0
    outage = outage.probed("connection timed out", now=101.0, cap_seconds=60.0)
    assert (outage.probes, outage.next_probe_at) == (1, 103.0)
    assert outage.reason == "connection timed out"
    assert outage.since == 100.0 and outage.age(160.0) == 60.0
    assert "2023-11-14 22:13:20 UTC" in outage.describe()
    assert outage.describe().endswith("connection timed out")


def test_an_execution_that_ran_through_an_outage_is_hidden() -> None:
    blind = Blind().after(100.0, 200.0)
    assert blind.hides(submitted_at=90.0, asked_at=210.0)  # ran right through it
    assert blind.hides(submitted_at=150.0, asked_at=210.0)  # (cannot happen, but still)
    assert blind.hides(submitted_at=50.0, asked_at=150.0)
    assert not blind.hides(submitted_at=10.0, asked_at=99.0)  # ended before it
    assert not blind.hides(submitted_at=201.0, asked_at=230.0)  # submitted after its end
    assert blind.hides(submitted_at=300.0, asked_at=310.0, ongoing=305.0)
    assert not blind.hides(submitted_at=300.0, asked_at=304.0, ongoing=305.0)


def test_only_the_latest_windows_are_kept() -> None:
    blind = Blind()
    for start in range(100):
        blind = blind.after(float(start), start + 0.5)
    assert len(blind.windows) == 16 and blind.windows[-1] == (99.0, 99.5)


def test_the_time_an_outage_hid_is_not_counted_against_a_deadline() -> None:
    blind = Blind().after(100.0, 200.0).after(300.0, 310.0)
    assert blind.unseen_seconds(50.0, 400.0) == 110.0  # both windows, whole
    assert blind.unseen_seconds(150.0, 305.0) == 55.0  # the halves it saw of each
    assert blind.unseen_seconds(210.0, 290.0) == 0.0
    assert blind.unseen_seconds(350.0, 400.0, ongoing=380.0) == 20.0  # one still going on
