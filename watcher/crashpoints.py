"""Crash points for the crash tests: die at a named step, exactly as `kill -9` would there.

`UNSTRACT_WATCHER_CRASH_AT=after_post` kills the process (exit 137, no clean-up) the first time
it passes `crash_point("after_post")`; `after_post:3` the third time. Unset, it costs one dict
lookup. Points: after_post, pack_claimed (a packed claim about to be sent), after_poll,
after_result_temp, after_result_replace, after_dispose, after_archive_aside and
after_set_aside (an earlier document's archived source, then its result file, renamed aside).

Lost-answer points stand for a database connection that drops after a COMMIT went through but
before its answer arrived (a window a real outage hits only now and then): a test arms one with
`lose_answer_at("upload_claim", 2)`, and the store raises a connection error there after the
commit, as the driver would. Points: upload_claim, poll_claim, fetch_claim, result_claim.
"""

from __future__ import annotations

import os
import threading

_ENV = "UNSTRACT_WATCHER_CRASH_AT"
_lock = threading.Lock()
_passes: dict[str, int] = {}


def _parse(spec: str) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or "1")


_TARGET = _parse(os.environ.get(_ENV, ""))
_lost_at: dict[str, int] = {}  # armed lost-answer points: the pass that loses its answer


def crash_point(name: str) -> None:
    if _TARGET is None or _TARGET[0] != name:
        return
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] >= _TARGET[1]:
            os._exit(137)


def lose_answer_at(name: str, nth: int = 1) -> None:
    """Arm a lost-answer point: its nth pass from now loses its answer, once."""
    with _lock:
        _passes[f"lose:{name}"] = 0
        _lost_at[name] = nth


def disarm_lost_answers() -> None:
    with _lock:
        _lost_at.clear()


def armed_answer_losses() -> list[str]:
    """The lost-answer points still waiting for their armed pass."""
    with _lock:
        return sorted(name for name, nth in _lost_at.items() if nth > 0)


def answer_lost(name: str) -> bool:
    """True once, at the armed pass of this point: the caller raises as a dropped
    connection would, after its commit."""
    if not _lost_at.get(name):
        return False
    with _lock:
        key = f"lose:{name}"
        _passes[key] = _passes.get(key, 0) + 1
        if not _lost_at.get(name) or _passes[key] < _lost_at[name]:
            return False
        del _lost_at[name]
        return True
