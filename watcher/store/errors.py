"""What the store's callers may catch, and the one way a database error becomes text."""

from __future__ import annotations

import sqlalchemy as sa

# Errors that mean "the database is unreachable for now", not "this query is wrong".
TRANSIENT_DB_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)
MAX_REASON_CHARS = 200


class StoreError(Exception):
    """The database cannot be reached or set up; the message says why (never a password)."""


def db_error_text(exc: BaseException) -> str:
    """The driver's one-line reason, without SQL or parameters (which may hold a result)."""
    detail = getattr(exc, "orig", None) or exc
    lines = str(detail).strip().splitlines()
    return lines[0][:MAX_REASON_CHARS] if lines else type(exc).__name__


def store_error(exc: BaseException, about: str = "") -> StoreError:
    """A StoreError that tells why, optionally prefixed with what it was about."""
    return StoreError(f"{about}: {db_error_text(exc)}" if about else db_error_text(exc))
