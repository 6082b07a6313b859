"""What each pipeline has learnt of how long its executions take, kept for the next start
(whose first polls then come when executions are likely done, not at a fixed gap).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("pipeline_state", sa.Column("execution_seconds", sa.Double))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_state") as batch:
        batch.drop_column("execution_seconds")
