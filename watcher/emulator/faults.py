"""Failures the emulators can inject, changeable while they run.

Both APIs share the conventions (`FaultKnobs`): counters apply to the next N requests of their
kind, then run out; a change names its knob and is checked by the knob's type. Each API's knobs
are a subclass: `Faults` for Unstract, `WhisperFaults` for LLMWhisperer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class FaultKnobs:
    """What every emulator's fault dataclass can do; a subclass declares the knobs as fields."""

    def take(self, name: str) -> bool:
        """Use up one unit of counter `name`; the caller holds the emulator's lock."""
        left: int = getattr(self, name)
        if left <= 0:
            return False
        setattr(self, name, left - 1)
        return True

    def update(self, changes: Mapping[str, object]) -> None:
        """Check every change first, then apply them all (ValueError names the bad one)."""
        kinds = {knob.name: str(knob.type) for knob in dataclasses.fields(self)}
        checked = {name: _checked(name, kinds.get(name), value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _checked(name: str, kind: str | None, value: object) -> object:
    """`value` for a knob of type `kind` ("bool", "float" or "int"), or a ValueError."""
    if kind is None:
        raise ValueError(f"unknown fault {name!r}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"fault {name!r} must be a boolean")
        return value
    wanted = "a number" if kind == "float" else "an integer"
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"fault {name!r} must be {wanted} >= 0")
    if kind == "float":
        return float(value)
    if not isinstance(value, int):
        raise ValueError(f"fault {name!r} must be {wanted} >= 0")
    return value


@dataclass
class Faults(FaultKnobs):
    """The Unstract emulator's knobs."""

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
    # Every request answers 503 with a load balancer's HTML page until cleared (the API's
    # maintenance window); nothing reaches the application.
    gateway_down: bool = False
    # GET answers 500 std-error with no side effect.
    get_error: int = 0
    # Sleep this long before handling every API request.
    slow_seconds: float = 0.0
    # Every API request answers 401, like a revoked key.
    unauthorized: bool = False


@dataclass
class WhisperFaults(FaultKnobs):
    """The LLMWhisperer emulator's knobs."""

    # POST /whisper answers 500; nothing is created.
    post_error_before_create: int = 0
    # POST /whisper creates the whisper (which runs normally), then answers 500.
    post_error_after_create: int = 0
    # POST /whisper creates the whisper, then closes the connection without any response.
    post_drop_after_create: int = 0
    # Any request answers 502 with an nginx HTML page; nothing reaches the service.
    proxy_html: int = 0
    # Every request answers 503 with a load balancer's HTML page until cleared (the
    # service's maintenance window); nothing reaches the service.
    gateway_down: bool = False
    # Any request answers 429 with Retry-After; nothing reaches the service.
    rate_limited: int = 0
    # GET whisper-status answers 500 with no side effect.
    status_error: int = 0
    # GET whisper-retrieve answers 500 before looking; the text stays retrievable.
    retrieve_error_before_delete: int = 0
    # A retrieve that hands out a text deletes it, then answers 500: the text is lost.
    retrieve_error_after_delete: int = 0
    # A retrieve that hands out a text deletes it, then closes the connection unanswered.
    retrieve_drop_after_delete: int = 0
    # The next N whispers created end as if their webhook gave up: once processed, the legacy
    # generation reports `webhook_retries_exceeded` (section 4.4; the current generation has
    # no such status and says `processed`). Their text stays retrievable, once.
    webhook_retries_exceeded: int = 0
    # The Retry-After seconds of `rate_limited` answers.
    retry_after_seconds: int = 1
    # Sleep this long before handling every API request.
    slow_seconds: float = 0.0
    # Every API request answers 401, like a revoked key.
    unauthorized: bool = False
    # Whispers created from now on never finish (stay processing).
    stall: bool = False
