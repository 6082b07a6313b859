"""Execution ids and lease owners of any length.

A whisper_hash is opaque (LLMWhisperer gives no length), and an instance id may be a long
host name: neither may fail an insert. SQLite does not enforce VARCHAR lengths, so only
PostgreSQL needs the change (and SQLite would have to copy the whole table for it).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("jobs", "execution_id", type_=sa.Text, existing_type=sa.String(64))
    op.alter_column("jobs", "lease_owner", type_=sa.Text, existing_type=sa.String(128))
    op.alter_column("results", "execution_id", type_=sa.Text, existing_type=sa.String(200))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("results", "execution_id", type_=sa.String(200), existing_type=sa.Text)
    op.alter_column("jobs", "lease_owner", type_=sa.String(128), existing_type=sa.Text)
    op.alter_column("jobs", "execution_id", type_=sa.String(64), existing_type=sa.Text)
