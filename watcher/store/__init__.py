"""The durable job table: the only package that speaks SQL."""

from watcher.store.schema import jobs, metadata, results
from watcher.store.store import KnownFile, Store, StoreError

__all__ = ["KnownFile", "Store", "StoreError", "jobs", "metadata", "results"]
