"""Several documents per execution: which claim packed a job with others, and whether it
must be sent alone next time (its packed execution gave it no answer of its own).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pack_id", sa.Integer))
        batch.add_column(sa.Column("alone", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("alone")
        batch.drop_column("pack_id")
