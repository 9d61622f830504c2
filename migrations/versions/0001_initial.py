"""Repositories, snapshots, files, chunks, index versions and embeddings, with pgvector and pg_trgm.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    now = sa.text("now()")
    op.create_table(
        "repositories",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("ref", sa.Text),
        sa.Column("current_snapshot_id", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
        sa.Column("commit", sa.Text),
        sa.Column("ref", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("stats", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("error", sa.Text),
    )
    op.create_index("snapshots_repo", "snapshots", ["repo_id", "id"])
    op.create_table(
        "skipped_files",
        sa.Column("snapshot_id", sa.Integer, sa.ForeignKey("snapshots.id", ondelete="CASCADE"), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("skipped_files_snapshot", "skipped_files", ["snapshot_id"])
    op.create_table(
        "files",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
        sa.Column("snapshot_id", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("language", sa.Text, nullable=False),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("decode_errors", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.UniqueConstraint("repo_id", "path", "content_hash", name="files_repo_path_hash"),
    )
    op.create_table(
        "chunks",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("file_id", sa.BigInteger, sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
        sa.Column("repo_id", sa.Integer, nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("start_byte", sa.Integer, nullable=False),
        sa.Column("end_byte", sa.Integer, nullable=False),
        sa.Column("start_line", sa.Integer, nullable=False),
        sa.Column("end_line", sa.Integer, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("search", TSVECTOR, nullable=False),
    )
    op.create_index("chunks_file", "chunks", ["file_id"])
    op.create_index("chunks_repo_hash", "chunks", ["repo_id", "content_hash"])
    op.create_index("chunks_search", "chunks", ["search"], postgresql_using="gin")
    op.create_index(
        "chunks_symbol_trgm", "chunks", ["symbol"], postgresql_using="gin", postgresql_ops={"symbol": "gin_trgm_ops"}
    )
    op.create_table(
        "index_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.Integer, sa.ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
        sa.Column("encoder", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("activated_at", sa.DateTime(timezone=True)),
        sa.Column("retired_at", sa.DateTime(timezone=True)),
        sa.Column("note", sa.Text),
    )
    op.create_index(
        "index_versions_one_active", "index_versions", ["repo_id"], unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "embeddings",
        sa.Column("index_version_id", sa.Integer, sa.ForeignKey("index_versions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("chunk_id", sa.BigInteger, sa.ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("embedding", Vector(), nullable=False),
    )
    op.create_index("embeddings_chunk", "embeddings", ["chunk_id"])


def downgrade() -> None:
    for table in ("embeddings", "index_versions", "chunks", "files", "skipped_files", "snapshots", "repositories"):
        op.drop_table(table)
