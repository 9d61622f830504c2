"""Index versions: create, build their HNSW index, verify, activate, retire and collect them."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grounding.records import IndexVersion
from grounding.store.writes import VECTOR_OPS, VECTOR_TYPE, storable, vector_literal

__all__ = [
    "active_index_version",
    "index_version",
    "building_index_version",
    "create_index_version",
    "build_vector_index",
    "activate_index_version",
    "visible_chunks_page",
    "count_visible_chunks",
    "count_version_embeddings",
    "copy_embeddings",
    "copy_version_embeddings",
    "version_vectors",
    "set_index_version_status",
    "nearest_in_version",
    "drop_index_version",
    "collect_index_versions",
    "index_versions",
    "set_fusion",
    "fusion_choice",
]


# --- index versions ----------------------------------------------------------------------------


_COLUMNS = "id, repo_id, encoder, dim, status, query_encoder, fusion->>'weights'"


def active_index_version(conn: Connection, repo: int) -> IndexVersion | None:
    row = conn.execute(
        sa.text(f"SELECT {_COLUMNS} FROM index_versions WHERE repo_id = :r AND status = 'active'"),
        {"r": repo},
    ).one_or_none()
    return IndexVersion(*row) if row else None


def index_version(conn: Connection, version_id: int) -> IndexVersion | None:
    """Any index version by id, whatever its status."""
    row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM index_versions WHERE id = :v"), {"v": version_id}).one_or_none()
    return IndexVersion(*row) if row else None


def building_index_version(conn: Connection, repo: int, *, encoder: str) -> IndexVersion | None:
    """A version left building by a failed first ingest with the same encoder: reused so its vectors are kept."""
    row = conn.execute(
        sa.text(
            f"SELECT {_COLUMNS} FROM index_versions "
            "WHERE repo_id = :r AND status = 'building' AND encoder = :e AND query_encoder IS NULL "
            "ORDER BY id DESC LIMIT 1"
        ),
        {"r": repo, "e": encoder},
    ).one_or_none()
    return IndexVersion(*row) if row else None


def set_fusion(conn: Connection, version: int, choice: dict) -> None:
    """Record the fusion weights chosen for a version, with the table that chose them (`choice["weights"]`)."""
    conn.execute(
        sa.text("UPDATE index_versions SET fusion = CAST(:c AS jsonb) WHERE id = :v"),
        {"v": version, "c": json.dumps(choice)},
    )


def fusion_choice(conn: Connection, version: int) -> dict | None:
    return conn.execute(sa.text("SELECT fusion FROM index_versions WHERE id = :v"), {"v": version}).scalar()


def create_index_version(
    conn: Connection, repo: int, *, encoder: str, dim: int, query_encoder: str | None = None, note: str | None = None
) -> IndexVersion:
    vid = conn.execute(
        sa.text(
            "INSERT INTO index_versions (repo_id, encoder, dim, status, query_encoder, note) "
            "VALUES (:r, :e, :d, 'building', :q, :n) RETURNING id"
        ),
        {"r": repo, "e": encoder, "d": dim, "q": query_encoder, "n": note},
    ).scalar_one()
    return IndexVersion(vid, repo, encoder, dim, "building", query_encoder)


def set_index_version_status(conn: Connection, version_id: int, status: str, *, note: str | None = None) -> None:
    """Mark a built version `candidate` (awaiting the promotion gate) or `shadow` (a training-time index)."""
    conn.execute(
        sa.text("UPDATE index_versions SET status = :s, note = coalesce(:n, note) WHERE id = :v"),
        {"v": version_id, "s": status, "n": note},
    )


def build_vector_index(conn: Connection, version: IndexVersion) -> None:
    """The version's own HNSW index (inner product), partial on its rows, with the dimension it needs."""
    vid, dim = int(version.id), int(version.dim)
    conn.execute(
        sa.text(
            f"CREATE INDEX IF NOT EXISTS embeddings_hnsw_v{vid} ON embeddings "
            f"USING hnsw ((embedding::{VECTOR_TYPE}({dim})) {VECTOR_OPS}) WHERE index_version_id = {vid}"
        )
    )


def activate_index_version(conn: Connection, version: IndexVersion) -> None:
    """Swap the version in atomically: the previous active one is retired in the same transaction."""
    conn.execute(
        sa.text(
            "UPDATE index_versions SET status = 'retired', retired_at = now() "
            "WHERE repo_id = :r AND status = 'active' AND id <> :v"
        ),
        {"r": version.repo_id, "v": version.id},
    )
    conn.execute(
        sa.text("UPDATE index_versions SET status = 'active', activated_at = now() WHERE id = :v"),
        {"v": version.id},
    )


# --- reindexing ----------------------------------------------------------------------------------


def visible_chunks_page(conn: Connection, repo: int, *, after_id: int, limit: int) -> list[tuple[int, str, str]]:
    """(id, content hash, embed text) of the visible chunks with id > after_id, in id order (keyset pages)."""
    rows = conn.execute(
        sa.text(
            "SELECT c.id, c.content_hash, CASE WHEN c.context = '' THEN c.text ELSE c.context || E'\\n' || c.text END "
            "FROM chunks c JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = f.repo_id "
            "WHERE f.repo_id = :r AND f.snapshot_id <= r.current_snapshot_id AND c.id > :a ORDER BY c.id LIMIT :n"
        ),
        {"r": repo, "a": after_id, "n": limit},
    )
    return [tuple(row) for row in rows]


def count_visible_chunks(conn: Connection, repo: int) -> int:
    return conn.execute(
        sa.text(
            "SELECT count(*) FROM chunks c JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = f.repo_id "
            "WHERE f.repo_id = :r AND f.snapshot_id <= r.current_snapshot_id"
        ),
        {"r": repo},
    ).scalar_one()


def count_version_embeddings(conn: Connection, version: int) -> int:
    return conn.execute(
        sa.text("SELECT count(*) FROM embeddings WHERE index_version_id = :v"), {"v": version}
    ).scalar_one()


def copy_embeddings(conn: Connection, version: IndexVersion, *, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
    storable(vectors, version.encoder)
    raw = conn.connection.driver_connection
    with raw.cursor().copy("COPY embeddings (index_version_id, chunk_id, embedding) FROM STDIN") as copy:
        for cid, vec in zip(chunk_ids, vectors):
            copy.write_row((version.id, cid, vector_literal(vec)))


def copy_version_embeddings(conn: Connection, source: IndexVersion, target: IndexVersion) -> int:
    """Copy another version's vectors of the visible chunks: a new query tower over an unchanged document tower."""
    return conn.execute(
        sa.text(
            "INSERT INTO embeddings (index_version_id, chunk_id, embedding) "
            "SELECT :t, e.chunk_id, e.embedding FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
            "JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = f.repo_id "
            "WHERE e.index_version_id = :s AND f.snapshot_id <= r.current_snapshot_id"
        ),
        {"s": source.id, "t": target.id},
    ).rowcount


def version_vectors(conn: Connection, version_id: int, chunk_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """The stored vectors of some chunks in one version."""
    rows = conn.execute(
        sa.text("SELECT chunk_id, embedding FROM embeddings WHERE index_version_id = :v AND chunk_id = ANY(:ids)"),
        {"v": version_id, "ids": list(chunk_ids)},
    )
    return {cid: parse_vector(vec) for cid, vec in rows}


def parse_vector(value) -> np.ndarray:
    """A pgvector value as read without the type registered ('[0.1,0.2]'), or already a sequence."""
    if isinstance(value, str):
        return np.array(value.strip("[]").split(","), dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


def nearest_in_version(
    conn: Connection, version: IndexVersion, vector: np.ndarray, *, k: int
) -> list[tuple[int, float]]:
    """(chunk id, inner product) nearest to `vector` through the version's own HNSW index, before activation."""
    vid, dim = int(version.id), int(version.dim)
    conn.execute(sa.text("SET LOCAL hnsw.ef_search = 100"))
    rows = conn.execute(
        sa.text(
            f"SELECT chunk_id, -(embedding::{VECTOR_TYPE}({dim}) <#> CAST(:q AS {VECTOR_TYPE}({dim}))) AS ip "
            f"FROM embeddings WHERE index_version_id = {vid} "
            f"ORDER BY embedding::{VECTOR_TYPE}({dim}) <#> CAST(:q AS {VECTOR_TYPE}({dim})) LIMIT :k"
        ),
        {"q": vector_literal(vector), "k": k},
    )
    return [(cid, float(ip)) for cid, ip in rows]


def drop_index_version(conn: Connection, version_id: int, *, status: str, note: str | None = None) -> None:
    """Give up a version: its vectors and HNSW index go, its row stays with the reason."""
    vid = int(version_id)
    conn.execute(sa.text(f"DROP INDEX IF EXISTS embeddings_hnsw_v{vid}"))
    conn.execute(sa.text("DELETE FROM embeddings WHERE index_version_id = :v"), {"v": vid})
    conn.execute(
        sa.text(
            "UPDATE index_versions SET status = :s, note = coalesce(:n, note), "
            "retired_at = coalesce(retired_at, now()) WHERE id = :v"
        ),
        {"v": vid, "s": status, "n": note},
    )


def collect_index_versions(conn: Connection, repo: int, *, grace_seconds: float) -> list[int]:
    """Remove the vectors of versions retired longer ago than the grace period, and of abandoned builds.

    Called under the repository lock, so a version still 'building' while an active one exists was
    left by a run that died. Candidates and training shadows are resolved by the run that made them
    within minutes or hours; one a day old was left by a run that died.
    """
    rows = conn.execute(
        sa.text(
            "SELECT id, status FROM index_versions v WHERE repo_id = :r AND ("
            " (status = 'retired' AND retired_at < now() - make_interval(secs => :g))"
            " OR (status = 'building' AND EXISTS (SELECT 1 FROM index_versions a WHERE a.repo_id = :r"
            "     AND a.status = 'active'))"
            " OR (status IN ('candidate', 'shadow') AND created_at < now() - interval '1 day')"
            " OR (status = 'failed' AND EXISTS (SELECT 1 FROM embeddings e WHERE e.index_version_id = v.id)))"
        ),
        {"r": repo, "g": grace_seconds},
    ).all()
    for vid, status in rows:
        if status == "retired":
            drop_index_version(conn, vid, status="retired", note="vectors removed after the grace period")
        else:
            drop_index_version(conn, vid, status="failed", note="abandoned: the run building it ended")
    return [vid for vid, _ in rows]


def index_versions(conn: Connection, repo: int) -> list[dict]:
    rows = conn.execute(
        sa.text(
            "SELECT v.id, v.encoder, v.query_encoder, v.dim, v.status, v.created_at, v.activated_at, v.retired_at, "
            "v.note, "
            "(SELECT count(*) FROM embeddings e WHERE e.index_version_id = v.id) AS vectors "
            "FROM index_versions v WHERE repo_id = :r ORDER BY v.id"
        ),
        {"r": repo},
    ).mappings()
    return [dict(row) for row in rows]
