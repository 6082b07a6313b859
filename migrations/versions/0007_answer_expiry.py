"""Stored answers that expire: one copy of each, a time it was dropped, the cost it reported,
and (SQLite) incremental auto-vacuum so that the pages they free go back to the disk.

`results.body` becomes NULL where the job row holds the same answer (one copy). An existing
SQLite file is rewritten once by VACUUM to switch auto-vacuum on (it needs free space about
the size of the file, and a transaction of its own); new files get it when created.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

ANSWER_KEPT = sa.text("result_body IS NOT NULL")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _incremental_auto_vacuum()
    op.add_column("jobs", sa.Column("answer_dropped_at", sa.Double))
    op.add_column("jobs", sa.Column("cost_in_dollars", sa.Double))
    op.create_index(
        "ix_jobs_answer_kept",
        "jobs",
        ["finished_at"],
        sqlite_where=ANSWER_KEPT,
        postgresql_where=ANSWER_KEPT,
    )
    op.create_index("ix_results_job", "results", ["job_id"])
    op.execute(
        "UPDATE results SET body = NULL WHERE body IS NOT NULL AND EXISTS (SELECT 1 FROM jobs "
        "WHERE jobs.id = results.job_id AND jobs.execution_id = results.execution_id "
        "AND jobs.result_body IS NOT NULL)"
    )


def _incremental_auto_vacuum() -> None:
    """VACUUM runs outside a transaction: the migrations so far are committed first (with
    their version), and a new transaction is begun for the rest of this one. A crash in
    between leaves the file at 0005, and this migration runs again."""
    raw = op.get_bind().connection.dbapi_connection
    assert raw is not None
    if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # INCREMENTAL already
        return
    raw.execute("COMMIT")
    raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
    raw.execute("VACUUM")
    raw.execute("BEGIN IMMEDIATE")


def downgrade() -> None:
    op.drop_index("ix_results_job", "results")
    op.drop_index("ix_jobs_answer_kept", "jobs")
    op.drop_column("jobs", "cost_in_dollars")
    op.drop_column("jobs", "answer_dropped_at")
