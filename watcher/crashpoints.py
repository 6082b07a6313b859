"""Crash points for the crash tests: die at a named step, exactly as `kill -9` would there.

`UNSTRACT_WATCHER_CRASH_AT=after_post` kills the process (exit 137, no clean-up) the first time
it passes `crash_point("after_post")`; `after_post:3` the third time. Unset, it costs one dict
lookup. Points: after_post, after_poll, after_result_temp, after_result_replace, after_dispose.
"""

from __future__ import annotations

import os
import threading

_ENV = "UNSTRACT_WATCHER_CRASH_AT"
_lock = threading.Lock()
_passes: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(_ENV, "")
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or "1")


_TARGET = _target()


def crash_point(name: str) -> None:
    if _TARGET is None or _TARGET[0] != name:
        return
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] >= _TARGET[1]:
            os._exit(137)
