"""RETRO retrieval databases: fixed-length LM-token chunks with encoder vectors, and cached neighbours.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retro_databases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
        sa.Column("snapshot_id", sa.Integer),
        sa.Column("commit", sa.Text),
        sa.Column("tokenizer", sa.Text, nullable=False),
        sa.Column("chunk_tokens", sa.Integer, nullable=False),
        sa.Column("encoder", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("stats", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("note", sa.Text),
    )
    op.create_index("retro_databases_repo", "retro_databases", ["repo_id", "id"])
    op.create_table(
        "retro_chunks",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("database_id", sa.Integer, sa.ForeignKey("retro_databases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("split", sa.Text, nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("tokens", ARRAY(sa.Integer), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("start_line", sa.Integer, nullable=False),
        sa.Column("end_line", sa.Integer, nullable=False),
        sa.Column("embedding", Vector(), nullable=False),
        sa.UniqueConstraint("database_id", "path", "ordinal", name="retro_chunks_database_path_ordinal"),
    )
    op.create_table(
        "retro_neighbours",
        sa.Column(
            "database_id",
            sa.Integer,
            sa.ForeignKey("retro_databases.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("config_key", sa.Text, primary_key=True),
        sa.Column("chunk_id", sa.BigInteger, primary_key=True),
        sa.Column("neighbours", ARRAY(sa.BigInteger), nullable=False),
    )


def downgrade() -> None:
    # The per-database HNSW indexes live on retro_chunks and go with it.
    op.drop_table("retro_neighbours")
    op.drop_table("retro_chunks")
    op.drop_table("retro_databases")
