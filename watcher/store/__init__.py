"""The durable job table: the only package that speaks SQL."""

from watcher.store.database import Database, retry_transient
from watcher.store.discovery import KnownFile
from watcher.store.errors import TRANSIENT_DB_ERRORS, StoreError, db_error_text
from watcher.store.schema import jobs, metadata, results
from watcher.store.statements import IllegalTransition
from watcher.store.store import Store

__all__ = [
    "TRANSIENT_DB_ERRORS",
    "Database",
    "IllegalTransition",
    "KnownFile",
    "Store",
    "StoreError",
    "db_error_text",
    "jobs",
    "metadata",
    "results",
    "retry_transient",
]
