"""Stored answers in a table of their own (issue 26): an answer that expires is deleted as a
whole row, so its space is given back, where `jobs.result_body` set to NULL left it inside
the job row's page (1.6 KB per processed document where the row needs about 330 B).

The answers still kept move to `answers` (their time stored: the job's `finished_at`, or
its `updated_at` if it has not finished: expiry wants it no later than the finish, and a
finished job's `updated_at` may be later, e.g. a newer version of its path was seen); then
`jobs.result_body` and its partial index go, and so does `ix_jobs_path`, whose columns lead
the unique index on (pipeline, path, sha256), which serves the same lookups (it cost about
46 B per processed document).

SQLite: dropping the column rebuilds `jobs` (alembic's batch mode copies its rows into a new
table), so the history's rows are packed anew, without the space the answers dropped before
left behind, and the old table's pages are given back by an incremental vacuum at the end.
The file already has incremental auto-vacuum (migration 0007, or since its creation). The
rebuild needs free space about the size of the job table and takes a while for a big one.
PostgreSQL: the column is dropped from the catalogue only (no rewrite); the space its old
values hold in existing rows is reused by autovacuum as rows are updated, and `VACUUM FULL
jobs` at a quiet moment gives it back to the disk at once.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "answers",
        sa.Column("job_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("stored_at", sa.Double, nullable=False),
    )
    op.create_index("ix_answers_stored", "answers", ["stored_at"])
    op.execute(
        "INSERT INTO answers (job_id, body, stored_at) "
        "SELECT id, result_body, COALESCE(finished_at, updated_at) FROM jobs "
        "WHERE result_body IS NOT NULL"
    )
    op.drop_index("ix_jobs_answer_kept", "jobs")
    # Its columns lead uq_jobs_document, which serves the same lookups by path.
    op.drop_index("ix_jobs_path", "jobs")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_column("jobs", "result_body")
        return
    with op.batch_alter_table("jobs", recreate="always") as batch:
        batch.drop_column("result_body")
    _give_back_pages()


def _give_back_pages() -> None:
    raw = op.get_bind().connection.dbapi_connection
    assert raw is not None
    if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # INCREMENTAL (0007)
        # Each step of the pragma frees a page: read it to its end. Inside the migration's
        # transaction (executescript would commit it before alembic stamps the revision, so
        # a kill -9 there left the schema at 0010 stamped 0009).
        raw.execute("PRAGMA incremental_vacuum").fetchall()


def downgrade() -> None:
    op.create_index("ix_jobs_path", "jobs", ["pipeline", "relative_path"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result_body", sa.Text))
    op.execute(
        "UPDATE jobs SET result_body = (SELECT body FROM answers WHERE answers.job_id = jobs.id)"
    )
    op.create_index(
        "ix_jobs_answer_kept",
        "jobs",
        ["finished_at"],
        sqlite_where=sa.text("result_body IS NOT NULL"),
        postgresql_where=sa.text("result_body IS NOT NULL"),
    )
    op.drop_table("answers")
