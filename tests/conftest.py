"""Shared fixtures: real databases (a SQLite file and the machine's PostgreSQL), the emulator."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from harness import KEY_ENV, LLMW_KEY_ENV

from watcher import finish
from watcher.emulator import (
    DEMO_KEY,
    LLMW_DEMO_KEY,
    EmulatorServer,
    LLMWhispererEmulator,
    UnstractEmulator,
    demo_emulator,
    mount_llmwhisperer,
)
from watcher.store import Store

PG_URL = os.environ.get(
    "UNSTRACT_WATCHER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def unconfigured_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults: a daemon's `configure` (at a reload, in
    `run --once`) binds the log to the stderr of its own test's capture."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL; fails (never skips) when the server is down."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {exc.orig}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store(db_url)
    opened.upgrade()
    yield opened
    opened.close()


@pytest.fixture
def quick_write_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The finisher tries a result it could not write (full disk, refused table row) again
    after 0.2 s instead of 5: a test that waits for the retry waits for it, not its pace."""
    monkeypatch.setattr(finish, "DISK_TROUBLE_WAIT_SECONDS", 0.2)


@pytest.fixture
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo keys in the environment variables the tests' configs name."""
    monkeypatch.setenv(KEY_ENV, DEMO_KEY)
    monkeypatch.setenv(LLMW_KEY_ENV, LLMW_DEMO_KEY)


@pytest.fixture
def execution_seconds() -> float:
    """How long the Unstract emulator's executions run; a module overrides it."""
    return 0.1


@pytest.fixture
def emulator(execution_seconds: float) -> UnstractEmulator:
    return demo_emulator(execution_seconds=execution_seconds)


@pytest.fixture
def whisperer() -> LLMWhispererEmulator | None:
    """An LLMWhisperer emulator to serve beside Unstract's; a module overrides it."""
    return None


@pytest.fixture
def server(
    emulator: UnstractEmulator, whisperer: LLMWhispererEmulator | None
) -> Iterator[EmulatorServer]:
    """The emulators over loopback HTTP (LLMWhisperer's too, where a module has one)."""
    with EmulatorServer(emulator, host="127.0.0.1", port=0) as started:
        if whisperer is not None:
            mount_llmwhisperer(started, whisperer)
        yield started
