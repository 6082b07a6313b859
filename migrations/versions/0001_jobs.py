"""The job table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("relative_path", sa.Text, nullable=False),
        sa.Column("relative_path_raw", sa.LargeBinary),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Double, nullable=False),
        sa.Column("execution_id", sa.String(64)),
        sa.Column("poll_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_poll_at", sa.Double),
        sa.Column("outcome", sa.String(16)),
        sa.Column("result_body", sa.Text),
        sa.Column("last_http_status", sa.Integer),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_until", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("submitted_at", sa.Double),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.UniqueConstraint("pipeline", "relative_path", "sha256", name="uq_jobs_document"),
    )
    op.create_index("ix_jobs_state_due", "jobs", ["state", "next_attempt_at"])
    op.create_index("ix_jobs_poll_due", "jobs", ["state", "next_poll_at"])
    op.create_index("ix_jobs_path", "jobs", ["pipeline", "relative_path"])


def downgrade() -> None:
    op.drop_table("jobs")
