"""What the daemon's process loads: modules that only other commands or the other database
use stay out of a SQLite daemon's memory (each stays for the process's life once imported)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from watcher.store import Store, StoreError

# Each costs 1.5 to 3 MiB of RSS: the `run --once` progress bar, PostgreSQL's dialect, and the
# emulator's package with its event loop (the parser's help for `emulator` names the demo).
LEFT_OUT = ("tqdm", "sqlalchemy.dialects.postgresql", "watcher.emulator", "uvloop")


def loaded_after(steps: str, url: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter holds after `steps` (Python, `url` at hand)."""
    check = f"import sys; url = sys.argv[1]; {steps}; print(*(m for m in sys.argv[2:] if m in sys.modules))"
    ran = subprocess.run(
        [sys.executable, "-c", check, url, *modules], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.split()


def test_a_sqlite_daemon_at_the_newest_schema_does_not_load_what_it_does_not_use(
    sqlite_url: str,
) -> None:
    store = Store(sqlite_url)
    store.upgrade()  # here: alembic, and with it the dialects, load in this process only
    store.close()
    steps = (
        "import watcher.cli; watcher.cli.build_parser(); from watcher.store import Store; "
        "store = Store(url); store.upgrade()"
    )
    assert loaded_after(steps, sqlite_url, LEFT_OUT) == []


def test_a_daemon_that_creates_its_schema_does_not_load_alembic(tmp_path: Path) -> None:
    """`upgrade_apart`, as `run` calls it: the migrations run in a child process, and the
    daemon's process (which lives for months) never imports alembic."""
    steps = (
        "from watcher.store import Store; from watcher.store.schema import SCHEMA_HEAD; "
        "store = Store(url); store.upgrade_apart(); "
        "assert store.schema_revision() == SCHEMA_HEAD"
    )
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert loaded_after(steps, url, ("alembic", *LEFT_OUT)) == []


def test_a_schema_upgrade_that_fails_apart_says_why(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    with store.engine.begin() as conn:  # a revision this version does not know
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('9999')"))
    with pytest.raises(StoreError, match="9999"):
        store.upgrade_apart()
    store.close()
