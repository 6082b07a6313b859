"""Pipeline state the operator commands read: paused or not, and why.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "pipeline_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("paused_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pipeline_state")
