"""Index versions' vectors stored as halfvec (16-bit floats): half the table and HNSW index size, same ranking.

Every version's partial HNSW index is dropped, the column rewritten, and the index built again over
`embedding::halfvec(dim)` with `halfvec_ip_ops` (store.build_vector_index), except for retired versions,
which are only waiting to be collected (a search still on one scans it). The table is locked while it
runs: on a large database, run `alembic upgrade head` (or any grounding command) in a quiet hour.
bench/vectors.py measured the ranking both ways before the change. RETRO databases (`retro_chunks`)
keep `vector`.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _indexed_versions(conn) -> list[tuple[int, int, str]]:
    """(version id, dim, status) of every version that has an HNSW index now."""
    return [
        (int(vid), int(dim), status)
        for vid, dim, status in conn.execute(
            sa.text(
                "SELECT v.id, v.dim, v.status FROM index_versions v "
                "WHERE to_regclass('embeddings_hnsw_v' || v.id) IS NOT NULL"
            )
        )
    ]


def _convert(to_type: str, ops: str) -> None:
    conn = op.get_bind()
    versions = _indexed_versions(conn)
    for vid, _, _ in versions:
        conn.execute(sa.text(f"DROP INDEX IF EXISTS embeddings_hnsw_v{vid}"))
    conn.execute(sa.text(f"ALTER TABLE embeddings ALTER COLUMN embedding TYPE {to_type} USING embedding::{to_type}"))
    conn.execute(sa.text("SET LOCAL maintenance_work_mem = '1GB'"))  # an HNSW build that fits is many times faster
    for vid, dim, status in versions:
        if status == "retired":
            continue
        conn.execute(
            sa.text(
                f"CREATE INDEX embeddings_hnsw_v{vid} ON embeddings "
                f"USING hnsw ((embedding::{to_type}({dim})) {ops}) WHERE index_version_id = {vid}"
            )
        )


def upgrade() -> None:
    _convert("halfvec", "halfvec_ip_ops")


def downgrade() -> None:
    _convert("vector", "vector_ip_ops")
