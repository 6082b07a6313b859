"""Figures, their targets, and the two ways they are printed: a table and one JSON line."""

from __future__ import annotations

import math
import operator
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
_SHOWN = {">=": "≥", "<=": "≤", "<": "<", "==": "="}


@dataclass(frozen=True)
class Target:
    op: str
    value: float

    def met(self, value: float) -> bool:
        return not math.isnan(value) and _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{_SHOWN[self.op]} {self.value:g}"


@dataclass(frozen=True)
class Figure:
    scenario: str
    key: str  # the JSON key
    label: str
    value: float
    unit: str = ""
    target: Target | None = None
    note: str = ""

    def verdict(self, judged: bool) -> str | None:
        if self.target is None or not judged:
            return None
        return "pass" if self.target.met(self.value) else "miss"


@dataclass
class Report:
    smoke: bool
    settings: dict[str, object] = field(default_factory=dict)  # non-standard settings (--set)
    figures: list[Figure] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # scenario -> why it did not finish
    problems: list[str] = field(default_factory=list)  # daemon warnings, exit codes, ...
    seconds: float = 0.0

    def add(self, figures: Sequence[Figure]) -> None:
        self.figures.extend(figures)

    def as_json(self) -> dict[str, Any]:
        judged = not self.smoke
        return {
            "bench": "unstract-watcher",
            "smoke": self.smoke,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "seconds": round(self.seconds, 1),
            "settings": self.settings,
            "figures": {f.key: _rounded(f.value) for f in self.figures},
            "verdicts": {f.key: f.verdict(judged) for f in self.figures if f.target},
            "errors": self.errors,
            "problems": self.problems,
        }

    def table(self) -> str:
        judged = not self.smoke
        rows = [("scenario", "figure", "value", "target", "verdict")]
        for f in self.figures:
            value = f"{_shown(f.value)} {f.unit}".strip()
            target = f"{f.target} {f.unit}".strip() if f.target else "-"
            rows.append((f.scenario, f.label, value, target, f.verdict(judged) or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for f in self.figures:
            if f.note:
                lines.append(f"  * {f.key}: {f.note}")
        for scenario, error in self.errors.items():
            lines.append(f"  ! {scenario} did not finish: {error}")
        for problem in self.problems:
            lines.append(f"  ! {problem}")
        if self.settings:
            lines.append(f"  (what-if run, non-standard settings: {self.settings})")
        if self.smoke:
            lines.append("  (smoke run: tiny sizes, timings are not judged)")
        return "\n".join(lines)


def _rounded(value: float) -> float | None:
    if math.isnan(value):
        return None
    return round(value, 4)


def _shown(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value == int(value) and abs(value) >= 10:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
