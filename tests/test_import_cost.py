"""What the daemon's process loads: modules that only other commands or the other database
use stay out of a SQLite daemon's memory (each stays for the process's life once imported)."""

from __future__ import annotations

import subprocess
import sys

from watcher.store import Store

# Each costs 1.5 to 3 MiB of RSS: the `run --once` progress bar, PostgreSQL's dialect, and the
# emulator's package with its event loop (the parser's help for `emulator` names the demo).
LEFT_OUT = ("tqdm", "sqlalchemy.dialects.postgresql", "watcher.emulator", "uvloop")


def test_a_sqlite_daemon_at_the_newest_schema_does_not_load_what_it_does_not_use(
    sqlite_url: str,
) -> None:
    store = Store(sqlite_url)
    store.upgrade()  # here: alembic, and with it the dialects, load in this process only
    store.close()
    check = (
        "import sys; import watcher.cli; watcher.cli.build_parser(); from watcher.store import Store; "
        "store = Store(sys.argv[1]); store.upgrade(); "
        "print(' '.join(m for m in sys.argv[2:] if m in sys.modules))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", check, sqlite_url, *LEFT_OUT], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == ""
