"""The statements every document passes through, run on the database driver's cursor.

Through SQLAlchemy Core a prebuilt statement costs 40-60 µs of Python per execution (its
cache lookup, parameter processing, result and row objects), more than SQLite takes to run
it, and a document takes about nine. A `Prepared` statement is compiled by SQLAlchemy once
per shape (the keys of a SET clause, the number of pipelines asked about) for the
connection's dialect, and then runs on the DBAPI cursor of the same connection and
transaction. Errors still arrive as SQLAlchemy's exceptions (the store retries its
OperationalError), and a connection the driver reports lost is invalidated, as SQLAlchemy
does for its own statements.

Parameters go to the driver as they are: plain str, int, float, bool, bytes or None.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler

SHAPES_KEPT = 256  # compiled forms per statement: SET key sets and pipeline counts are few


@dataclass(frozen=True)
class Ran:
    """What a statement gave back: rows affected, and the rows it returned (if any)."""

    rowcount: int
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def mappings(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    order: tuple[str, ...] | None  # positional drivers (SQLite): the parameters' order
    fixed: dict[str, Any]  # values the statement carries itself (its literals)


class Prepared:
    """A statement built by `build(shape)`, compiled once per (dialect, shape)."""

    def __init__(self, build: Callable[[Any], sa.ClauseElement]) -> None:
        self._build = build
        self._compiled: dict[tuple[str, Hashable], _Compiled] = {}

    def run(self, conn: Connection, params: Mapping[str, Any], shape: Hashable = None) -> Ran:
        compiled = self._compiled.get((conn.dialect.name, shape))
        if compiled is None:
            compiled = self._compile(conn.dialect, shape)
        values = {**compiled.fixed, **params}
        args: Any = values if compiled.order is None else [values[n] for n in compiled.order]
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None  # a connection in a transaction has one
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.sql, args)
            rows = list(cursor.fetchall()) if cursor.description else []
            columns = tuple(d[0] for d in cursor.description or ())
            return Ran(cursor.rowcount, columns, rows)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _translated(conn, compiled.sql, exc, cursor) from exc
        finally:
            cursor.close()

    def _compile(self, dialect: Dialect, shape: Hashable) -> _Compiled:
        compiler = self._build(shape).compile(dialect=dialect)
        assert isinstance(compiler, SQLCompiler)
        if "POSTCOMPILE" in compiler.string:
            raise AssertionError("a prepared statement may not expand parameters (IN lists)")
        # The statement's own values (its literals), under the names its SQL gives them.
        fixed = {
            name: bind.effective_value
            for bind, name in compiler.bind_names.items()
            if not bind.required
        }
        order = tuple(compiler.positiontup or ()) if compiler.positional else None
        compiled = _Compiled(compiler.string, order, fixed)
        if len(self._compiled) >= SHAPES_KEPT:
            self._compiled.clear()
        self._compiled[(dialect.name, shape)] = compiled
        return compiled


def _translated(conn: Connection, sql: str, exc: Any, cursor: Any) -> sa.exc.StatementError:
    """The driver's error as SQLAlchemy would raise it; a lost connection is invalidated, so
    that the pool does not hand it out again."""
    dbapi_connection = conn.connection.dbapi_connection
    lost = conn.dialect.is_disconnect(exc, dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    error: sa.exc.StatementError = sa.exc.DBAPIError.instance(
        sql,
        None,  # parameters stay out of the message: they may hold a result
        exc,
        conn.dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=conn.dialect,
    )
    return error


def one_of(column: sa.ColumnElement[Any], count: int, prefix: str) -> sa.ColumnElement[bool]:
    """`column` equals one of `count` parameters named prefix0, prefix1, ... (no IN list,
    which SQLAlchemy expands at every execution; SQLite and PostgreSQL use the index for
    either)."""
    if count == 0:
        return sa.false()
    return sa.or_(*(column == sa.bindparam(f"{prefix}{i}") for i in range(count)))


def one_of_params(prefix: str, values: list[str]) -> dict[str, str]:
    return {f"{prefix}{i}": value for i, value in enumerate(values)}
