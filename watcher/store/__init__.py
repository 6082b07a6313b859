"""The durable job table: the only package that speaks SQL."""

from watcher.store.schema import jobs, metadata, results
from watcher.store.store import TRANSIENT_DB_ERRORS, KnownFile, Store, StoreError, db_error_text

__all__ = [
    "TRANSIENT_DB_ERRORS",
    "KnownFile",
    "Store",
    "StoreError",
    "db_error_text",
    "jobs",
    "metadata",
    "results",
]
