"""Request counters of the emulators, read by tests and the benchmark.

Each API has live counters (updated under its emulator's lock) and a frozen snapshot of them
with the same field names plus the per-item times the emulator adds; the shared part
(`Snapshot.as_json`, `LiveCounters.freeze`) is written once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar

USAGE_MODES = (
    "native_text",
    "low_cost",
    "high_quality",
    "form",
    "table",
    "excel",
    "document_insights",
)
MONTHLY_QUOTA = 100_000

SnapshotT = TypeVar("SnapshotT", bound="Snapshot")


@dataclass(frozen=True)
class Snapshot:
    """A frozen snapshot of counters; mappings are read-only views."""

    def as_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass
class LiveCounters:
    """Live counters whose field names are those of their snapshot."""

    def freeze(self, kind: type[SnapshotT], **times: Mapping[str, float]) -> SnapshotT:
        values = {f.name: getattr(self, f.name) for f in fields(self)} | times
        return kind(**{name: _frozen(value) for name, value in values.items()})


def _plain(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else value


def _frozen(value: object) -> object:
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else value


# -- Unstract -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatorStats(Snapshot):
    """A frozen snapshot of the Unstract emulator's counters."""

    posts: int  # every POST to a deployment URL, including refused and faulted ones
    executions_created: int
    posts_by_sha256: Mapping[str, int]  # file sha256 -> executions created containing it
    gets: int  # every GET to a deployment URL
    gets_by_execution: Mapping[str, int]  # canonical execution id -> GETs naming it
    rate_limited: int  # 429 answers
    already_acknowledged: int  # 406 answers
    completed_at: Mapping[str, float]  # execution id -> epoch seconds it became terminal
    max_concurrent: Mapping[str, int]  # org -> peak of non-terminal executions


@dataclass
class StatsCounters(LiveCounters):
    """The Unstract emulator's live counters."""

    posts: int = 0
    executions_created: int = 0
    posts_by_sha256: Counter[str] = field(default_factory=Counter)
    gets: int = 0
    gets_by_execution: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    already_acknowledged: int = 0
    max_concurrent: dict[str, int] = field(default_factory=dict)

    def record_execution(self, org: str, hashes: Iterable[str], running: int) -> None:
        self.executions_created += 1
        self.posts_by_sha256.update(set(hashes))
        self.max_concurrent[org] = max(self.max_concurrent.get(org, 0), running)

    def snapshot(self, completed_at: Mapping[str, float]) -> EmulatorStats:
        return self.freeze(EmulatorStats, completed_at=completed_at)


# -- LLMWhisperer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhisperStats(Snapshot):
    """A frozen snapshot of the LLMWhisperer emulator's counters."""

    posts: int  # every POST /whisper, including refused and faulted ones
    whispers_created: int
    posts_by_sha256: Mapping[str, int]  # document sha256 -> whispers created with it
    status_gets: int  # every GET whisper-status
    status_gets_by_hash: Mapping[str, int]
    retrieves: int  # every GET whisper-retrieve
    retrieves_by_hash: Mapping[str, int]
    deliveries: int  # retrieves that handed out and deleted a text (even if the answer was lost)
    rate_limited: int  # 429 answers
    max_in_flight: int  # peak of whispers neither processed nor failed
    completed_at: Mapping[str, float]  # whisper hash -> epoch seconds it became processed/failed
    delivered_at: Mapping[str, float]  # whisper hash -> epoch seconds its text was handed out


@dataclass
class WhisperCounters(LiveCounters):
    """The LLMWhisperer emulator's live counters."""

    posts: int = 0
    whispers_created: int = 0
    posts_by_sha256: Counter[str] = field(default_factory=Counter)
    status_gets: int = 0
    status_gets_by_hash: Counter[str] = field(default_factory=Counter)
    retrieves: int = 0
    retrieves_by_hash: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    rate_limited: int = 0
    max_in_flight: int = 0

    def record_whisper(self, sha256: str, in_flight: int) -> None:
        self.whispers_created += 1
        self.posts_by_sha256[sha256] += 1
        self.max_in_flight = max(self.max_in_flight, in_flight)

    def snapshot(
        self, completed_at: Mapping[str, float], delivered_at: Mapping[str, float]
    ) -> WhisperStats:
        return self.freeze(WhisperStats, completed_at=completed_at, delivered_at=delivered_at)


def usage_info(pages_by_mode: Mapping[str, int]) -> dict[str, Any]:
    """The `get-usage-info` body (section 4.3) of a paid plan: -1 means not applicable."""
    total = sum(pages_by_mode.values())
    body: dict[str, Any] = {
        "subscription_plan": "emulator",
        "daily_quota": -1,
        "monthly_quota": MONTHLY_QUOTA,
        "today_page_count": total,
        "current_page_count": total,
        "overage_page_count": max(0, total - MONTHLY_QUOTA),
    }
    body.update({f"current_page_count_{mode}": pages_by_mode.get(mode, 0) for mode in USAGE_MODES})
    return body
