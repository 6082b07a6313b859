"""Request and execution counters, read by tests and the benchmark."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class EmulatorStats:
    """A frozen snapshot of the emulator's counters."""

    posts: int  # every POST to a deployment URL, including refused and faulted ones
    executions_created: int
    posts_by_sha256: Mapping[str, int]  # file sha256 -> executions created containing it
    gets: int  # every GET to a deployment URL
    gets_by_execution: Mapping[str, int]  # canonical execution id -> GETs naming it
    rate_limited: int  # 429 answers
    already_acknowledged: int  # 406 answers
    completed_at: Mapping[str, float]  # execution id -> epoch seconds it became terminal
    max_concurrent: Mapping[str, int]  # org -> peak of non-terminal executions

    def as_json(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "executions_created": self.executions_created,
            "posts_by_sha256": dict(self.posts_by_sha256),
            "gets": self.gets,
            "gets_by_execution": dict(self.gets_by_execution),
            "rate_limited": self.rate_limited,
            "already_acknowledged": self.already_acknowledged,
            "completed_at": dict(self.completed_at),
            "max_concurrent": dict(self.max_concurrent),
        }


@dataclass
class StatsCounters:
    """The live counters; the emulator updates them under its lock."""

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
        return EmulatorStats(
            posts=self.posts,
            executions_created=self.executions_created,
            posts_by_sha256=MappingProxyType(dict(self.posts_by_sha256)),
            gets=self.gets,
            gets_by_execution=MappingProxyType(dict(self.gets_by_execution)),
            rate_limited=self.rate_limited,
            already_acknowledged=self.already_acknowledged,
            completed_at=MappingProxyType(dict(completed_at)),
            max_concurrent=MappingProxyType(dict(self.max_concurrent)),
        )
