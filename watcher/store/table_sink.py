"""Result tables: one row per finished document in a table a pipeline names, in the daemon's
own database or another one, created if missing.

Rows are inserted or updated by (pipeline, source, sha256), and written before the document
counts as done: a crash in between writes the same row again after the restart, never a
second one, and a database that refuses a row leaves the document waiting. Result and
metadata are JSON (JSONB on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from watcher.config import TableConfig
from watcher.flatten import cost_in_dollars
from watcher.jobs import Job
from watcher.store.errors import store_error
from watcher.store.schema import create_engine, json_type, upsert_builder
from watcher.store.store import Store

KEY = ("pipeline", "source", "sha256")


def result_table(name: str) -> sa.Table:
    json = json_type()
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("execution_id", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cost", sa.Double),
        sa.Column("error", sa.Text),
        sa.Column("result", json),
        sa.Column("metadata", json),
        sa.UniqueConstraint(*KEY, name=f"uq_{name}_document"),
    )


def table_row(job: Job, document: dict[str, Any], finished_at: float) -> dict[str, Any]:
    """A finished document's row, from its result file's content; pure."""
    return {
        "pipeline": job.pipeline,
        "source": document["source"],
        "sha256": job.sha256,
        "execution_id": job.execution_id,
        "status": document["status"],
        "finished_at": datetime.fromtimestamp(finished_at, UTC),
        "cost": cost_in_dollars(document.get("metadata")),
        "error": document["error"],
        "result": document["result"],
        "metadata": document["metadata"],
    }


class TableSinks:
    """The result tables of one daemon's pipelines; engines are shared by URL and opened on
    first use. The daemon's own database is written through its store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._engines: dict[str, Engine] = {}
        self._ready: dict[tuple[str, str], sa.Table] = {}

    def write(self, config: TableConfig, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or update the rows in one transaction; StoreError if the database refuses
        (the message never holds the URL)."""
        url = config.url.get_secret_value()
        try:
            table = self._table(url, config.name)
            with self._transaction(url) as conn:
                conn.execute(self._upsert(url, table), list(rows))
        except sa.exc.SQLAlchemyError as exc:
            self._ready.pop((url, config.name), None)  # dropped or changed: look again next time
            raise store_error(exc, f"table {config.name}") from None

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        self._ready.clear()

    def _upsert(self, url: str, table: sa.Table) -> Any:
        dialect = self._engine(url).dialect.name
        insert = upsert_builder(dialect)(table)
        changed = {c.name: insert.excluded[c.name] for c in table.c if c.name not in ("id", *KEY)}
        return insert.on_conflict_do_update(index_elements=list(KEY), set_=changed)

    def _table(self, url: str, name: str) -> sa.Table:
        table = self._ready.get((url, name))
        if table is None:
            table = result_table(name)
            try:
                table.create(self._engine(url), checkfirst=True)
            except (sa.exc.ProgrammingError, sa.exc.IntegrityError):
                # Another instance created it at the same moment: it is there now.
                if not sa.inspect(self._engine(url)).has_table(name):
                    raise
            self._ready[url, name] = table
        return table

    def _engine(self, url: str) -> Engine:
        if not url:
            return self.store.engine
        if url not in self._engines:
            self._engines[url] = create_engine(url, busy_timeout_seconds=30.0)
        return self._engines[url]

    def _transaction(self, url: str) -> AbstractContextManager[Connection]:
        # The daemon's database: through its store, which serialises SQLite's writers.
        return self.store.db.write() if not url else _begin(self._engine(url))


@contextmanager
def _begin(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn
