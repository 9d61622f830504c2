"""Repository deletes, recorded: an ingest queued before a delete must not register the repository again.

One row per deleted repository, named by the SHA-256 of its name. An ingest job (the API's, the copilot's)
or a refresh's fan-out run records the sequence's last value when it is queued; at run time, a row of its
repository's name past that value means a delete came in between, and the ingest writes nothing.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repo_deletions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name_sha256", sa.Text, nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("repo_deletions_name", "repo_deletions", ["name_sha256", "id"])


def downgrade() -> None:
    op.drop_table("repo_deletions")
