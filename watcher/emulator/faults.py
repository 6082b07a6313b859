"""Failures the emulator can inject, changeable while it runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COUNTERS = (
    "post_error_before_create",
    "post_error_after_create",
    "post_drop_after_create",
    "post_staging_error",
    "proxy_html",
    "get_error",
)


@dataclass
class Faults:
    """Counters apply to the next N requests of their kind, then run out."""

    # POST answers 500 std-error; nothing is created.
    post_error_before_create: int = 0
    # POST creates the execution (which runs normally), then answers 500 std-error.
    post_error_after_create: int = 0
    # POST creates the execution, then closes the connection without any response.
    post_drop_after_create: int = 0
    # POST creates an ERROR execution and answers 422 with `error` text, `status_api` null.
    post_staging_error: int = 0
    # POST or GET answers 502 with an nginx HTML page; nothing reaches the application.
    proxy_html: int = 0
    # GET answers 500 std-error with no side effect.
    get_error: int = 0
    # Sleep this long before handling every API request.
    slow_seconds: float = 0.0
    # Every API request answers 401, like a revoked key.
    unauthorized: bool = False

    def take(self, name: str) -> bool:
        """Use up one unit of counter `name`; the caller holds the emulator's lock."""
        left: int = getattr(self, name)
        if left <= 0:
            return False
        setattr(self, name, left - 1)
        return True

    def update(self, changes: Mapping[str, object]) -> None:
        """Check every change first, then apply them all (ValueError names the bad one)."""
        checked = {name: _checked(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _checked(name: str, value: object) -> object:
    if name == "unauthorized":
        if not isinstance(value, bool):
            raise ValueError("fault 'unauthorized' must be a boolean")
        return value
    if name == "slow_seconds":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError("fault 'slow_seconds' must be a number >= 0")
        return float(value)
    if name in COUNTERS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"fault {name!r} must be an integer >= 0")
        return value
    raise ValueError(f"unknown fault {name!r}")
