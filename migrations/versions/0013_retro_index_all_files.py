"""RETRO databases' HNSW indexes cover every chunk, held-out files included: a completion reads them all.

Training keeps to train chunks by its queries' filter (an iterative scan skips the rest). Each database
with an index that is not retired is rebuilt without its `split = 'train'` predicate (retired ones keep
theirs until they are collected); downgrade puts it back. RETRO tables are locked while it runs.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _rebuild(predicate: str) -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT d.id, d.dim FROM retro_databases d "
            "WHERE d.status <> 'retired' AND to_regclass('retro_chunks_hnsw_d' || d.id) IS NOT NULL"
        )
    ).all()
    conn.execute(sa.text("SET LOCAL maintenance_work_mem = '1GB'"))
    for did, dim in rows:
        did, dim = int(did), int(dim)
        conn.execute(sa.text(f"DROP INDEX IF EXISTS retro_chunks_hnsw_d{did}"))
        conn.execute(
            sa.text(
                f"CREATE INDEX retro_chunks_hnsw_d{did} ON retro_chunks "
                f"USING hnsw ((embedding::vector({dim})) vector_ip_ops) WHERE database_id = {did}{predicate}"
            )
        )


def upgrade() -> None:
    _rebuild("")


def downgrade() -> None:
    _rebuild(" AND split = 'train'")
