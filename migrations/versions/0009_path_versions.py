"""Versions of one path, and where each job's result file went (issue 31).

`version` orders the contents a path has held: a new content takes the path's highest plus
one, and so does an earlier content that comes back (A -> B -> A). Rows already there take
their id, which orders them as before. `result_file` says where the job's result file is:
at the path's own name, kept aside under a name with the job id, replaced by a later
document's (a pipeline with `on_reused_name = "replace"`), or none (superseded: a newer
version's result was there first). NULL: not written yet, or written before this revision
(at the path's own name).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("version", sa.Integer))
    op.add_column("jobs", sa.Column("result_file", sa.String(16)))
    op.execute("UPDATE jobs SET version = id")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_file")
        batch.drop_column("version")
