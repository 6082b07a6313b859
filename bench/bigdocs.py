"""The big-document scenario: memory that must not grow with a document's size, and the rate
at which big documents go out.

Two daemons of their own, each warmed up with one small document and then idle: one gets 16
documents of 48 MiB at once, packed four per execution (`files_per_execution = 4`, and
`max_in_flight = 4` so that a backlog waits and packs form) against the Unstract emulator; the
other one document of 2 GiB (`max_file_bytes` raised, the file sparse) against the
LLMWhisperer emulator, so that both APIs' uploads are measured. The documents are written in
a folder beside and renamed in, so that they arrive at once. Figures: the daemon's peak RSS
over its idle RSS (VmHWM, reset before the drop through /proc/PID/clear_refs), and the upload
rate: the documents' MiB over the time from the first `uploading` log line to the last
`submitted` one (the daemon logs at debug here), the emulator's reading of the body included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    Daemon,
    Layout,
    doc_names,
    drop,
    error_files,
    make_documents,
    start_daemon,
    start_emulator,
    wait_for_results,
)
from report import Figure, Target
from scenarios import MIB, Context

from watcher.emulator import LLMW_DEMO_KEY

PEAK_TARGET_MIB = 64  # over the idle daemon; the aim is 16
LLMW_KEY_ENV = "BENCH_LLMWHISPERER_API_KEY"
PACKED = (("api", "files_per_execution", 4), ("api", "max_in_flight", 4))


@dataclass(frozen=True)
class WhisperLayout(Layout):
    """A daemon whose pipeline sends to LLMWhisperer (which takes no `tags`)."""

    def tables(self) -> dict[str, dict[str, Any]]:
        tables = super().tables()
        api = tables["api"]
        del api["tags"]
        api.update(kind="llmwhisperer", api_key_env=LLMW_KEY_ENV)
        return tables


@dataclass(frozen=True)
class Measured:
    mib: float
    idle_kib: int
    peak_kib: int
    seconds: float  # first `uploading` line to the last `submitted` one
    executions: int  # Unstract executions created, the warm-up's included (0: LLMWhisperer)


def big_documents(ctx: Context) -> list[Figure]:
    count, mib = ctx.sizes.big_docs
    packed = _run(ctx, "bigdocs-packed", [mib * MIB] * count, whisper=False)
    huge_mib = ctx.sizes.huge_doc_mib
    huge = _run(ctx, "bigdocs-huge", [huge_mib * MIB], whisper=True)
    return [
        *_figures("bigdocs_packed", f"{count} x {mib} MiB at once, 4 per execution", packed),
        *_figures("bigdocs_huge", f"one {huge_mib} MiB document (LLMWhisperer)", huge),
    ]


def _run(ctx: Context, scenario: str, sizes: list[int], whisper: bool) -> Measured:
    home = ctx.home(scenario)
    emulator = start_emulator(ctx.procs, home / "emulator.log", 0.0, ctx.org_limit)
    url = f"{emulator.base_url}/api/v2" if whisper else emulator.deployment_url
    layout = _layout(ctx, home, url, whisper, max(sizes))
    daemon = start_daemon(ctx.procs, layout, env={LLMW_KEY_ENV: LLMW_DEMO_KEY})
    ctx.say(f"{scenario}: daemon pid {daemon.pid}, emulator pid {emulator.proc.pid}, in {home}")
    try:
        _warm_up(ctx, layout, daemon)
        idle = daemon.status_kib("VmRSS")
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")  # VmHWM starts again from now
        _drop_at_once(home / "staging", layout.watch_dir / "big", sizes)
        stall = ctx.sizes.stall_seconds + sum(sizes) / MIB / 20  # at least 20 MiB/s
        results = wait_for_results(layout.output_dir / "big", len(sizes), daemon, stall)
        peak = daemon.status_kib("VmHWM")
        executions = int(emulator.stats().get("executions_created", 0))
    finally:
        ctx.finish_daemon(scenario, daemon)
        ctx.procs.stop(emulator.proc)
        _remove(home / "staging", layout.watch_dir / "big")
    if error_files(results):
        raise BenchError(f"{scenario}: a document got an error file: {error_files(results)[0]}")
    return Measured(sum(sizes) / MIB, idle, peak, _upload_seconds(daemon), executions)


def _layout(ctx: Context, home: Path, url: str, whisper: bool, biggest: int) -> Layout:
    layout = ctx.layout(home, url).with_url(url, "debug")
    limit = ("pipeline", "max_file_bytes", max(biggest + MIB, 100 * MIB))
    changes = (limit,) if whisper else (*PACKED, limit)
    layout = replace(layout, overrides=(*changes, *layout.overrides))
    return WhisperLayout(**vars(layout)) if whisper else layout


def _warm_up(ctx: Context, layout: Layout, daemon: Daemon) -> None:
    drop(layout.watch_dir / "warmup", doc_names(1, "warm"), make_documents(1))
    wait_for_results(layout.output_dir / "warmup", 1, daemon, ctx.sizes.stall_seconds)


def _drop_at_once(staging: Path, folder: Path, sizes: list[int]) -> None:
    """Documents written beside the watched folder, then renamed in one after another; a
    document over 64 MiB is sparse (a header, then zeros), the others text."""
    staging.mkdir(parents=True)
    names = doc_names(len(sizes), "big")
    for name, size in zip(names, sizes, strict=True):
        with (staging / name).open("wb") as handle:
            if size > 64 * MIB:
                handle.write(b"%PDF-1.4\n% unstract-watcher benchmark, sparse\n")
                handle.truncate(size)
            else:
                for piece in make_documents(size // MIB, MIB):
                    handle.write(piece)
    folder.mkdir(parents=True)
    for name in names:
        os.rename(staging / name, folder / name)


def _remove(*folders: Path) -> None:
    for folder in folders:
        for path in folder.glob("*"):
            path.unlink()


def _upload_seconds(daemon: Daemon) -> float:
    """From the first `uploading` line after the warm-up to the last `submitted` one."""
    times: dict[str, list[float]] = {"uploading": [], "submitted": []}
    for event in daemon.log_events():
        if event.get("event") in times and "timestamp" in event:
            stamp = event["timestamp"].replace("Z", "+00:00")
            times[event["event"]].append(datetime.fromisoformat(stamp).timestamp())
    if len(times["uploading"]) < 2 or not times["submitted"]:
        raise BenchError("bigdocs: the daemon's log has no `uploading`/`submitted` lines")
    return max(times["submitted"]) - sorted(times["uploading"])[1]  # [0] is the warm-up's


def _figures(key: str, label: str, measured: Measured) -> list[Figure]:
    over_idle = (measured.peak_kib - measured.idle_kib) / 1024
    idle_note = f"idle {measured.idle_kib / 1024:.1f} MiB, peak {measured.peak_kib / 1024:.1f} MiB"
    return [
        Figure(
            "bigdocs",
            f"{key}_peak_over_idle_mb",
            f"peak RSS over idle, {label}",
            over_idle,
            "MiB",
            Target("<", PEAK_TARGET_MIB),
            f"{idle_note}; aim 16 MiB",
        ),
        Figure(
            "bigdocs",
            f"{key}_upload_mib_per_s",
            f"upload rate, {label}",
            measured.mib / measured.seconds,
            "MiB/s",
            note=f"{measured.mib:.0f} MiB in {measured.seconds:.2f} s{_packs(measured)}; "
            "not lower than main's",
        ),
    ]


def _packs(measured: Measured) -> str:
    packs = measured.executions - 1  # the warm-up's own
    return f", in {packs} executions" if packs > 0 else ""
