"""Alembic migrations of the job table (shipped as the package `watcher._migrations`)."""
