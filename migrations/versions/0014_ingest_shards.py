"""The plan of a sharded ingest, kept in Postgres: each shard's files (path, content hash) and index version,
and what each of its write batches did.

The ingest that holds the repository's lock writes the plan; an `ingest-shard` run is told only the
snapshot and the shard's number, so no path or hash of a repository travels in Prefect's parameters and
no caller can name a file the ingest did not list. A batch's counts are appended in the transaction that
writes its rows, so a shard whose process died leaves the counts of what it did write.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_shards",
        sa.Column("snapshot_id", sa.Integer, sa.ForeignKey("snapshots.id", ondelete="CASCADE"), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column(
            "index_version_id", sa.Integer, sa.ForeignKey("index_versions.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("files", JSONB, nullable=False),  # [[path, content hash], ...] in listing order
        sa.Column("batches", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.PrimaryKeyConstraint("snapshot_id", "shard"),
    )


def downgrade() -> None:
    op.drop_table("ingest_shards")
