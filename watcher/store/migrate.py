"""`python -m watcher.store.migrate`: the schema upgrade in a process of its own.

The daemon runs for months; alembic, once imported, would stay in its memory for good (about
12 MiB with what it brings), so a daemon that finds its schema behind upgrades it here
(`Store.upgrade_apart`). Reads `[url, busy_timeout_seconds]` as JSON on stdin, never argv (a
PostgreSQL URL may hold a password); exits 1 with the store's message on stderr.
"""

from __future__ import annotations

import json
import sys

from watcher.store.errors import StoreError
from watcher.store.store import Store


def main() -> int:
    url, busy_timeout_seconds = json.load(sys.stdin)
    try:
        store = Store(str(url), float(busy_timeout_seconds))
        try:
            store.upgrade()
        finally:
            store.close()
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
