"""Request and whisper counters of the LLMWhisperer emulator, read by tests and the benchmark."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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


@dataclass(frozen=True)
class WhisperStats:
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

    def as_json(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "whispers_created": self.whispers_created,
            "posts_by_sha256": dict(self.posts_by_sha256),
            "status_gets": self.status_gets,
            "status_gets_by_hash": dict(self.status_gets_by_hash),
            "retrieves": self.retrieves,
            "retrieves_by_hash": dict(self.retrieves_by_hash),
            "deliveries": self.deliveries,
            "rate_limited": self.rate_limited,
            "max_in_flight": self.max_in_flight,
            "completed_at": dict(self.completed_at),
            "delivered_at": dict(self.delivered_at),
        }


@dataclass
class WhisperCounters:
    """The live counters; the emulator updates them under its lock."""

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
        return WhisperStats(
            posts=self.posts,
            whispers_created=self.whispers_created,
            posts_by_sha256=MappingProxyType(dict(self.posts_by_sha256)),
            status_gets=self.status_gets,
            status_gets_by_hash=MappingProxyType(dict(self.status_gets_by_hash)),
            retrieves=self.retrieves,
            retrieves_by_hash=MappingProxyType(dict(self.retrieves_by_hash)),
            deliveries=self.deliveries,
            rate_limited=self.rate_limited,
            max_in_flight=self.max_in_flight,
            completed_at=MappingProxyType(dict(completed_at)),
            delivered_at=MappingProxyType(dict(delivered_at)),
        )


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
