"""Bulk writes of files, chunks and their vectors with COPY, and the look-ups incremental ingest needs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grounding.errors import IngestError
from grounding.lexical import chunk_tokens
from grounding.records import Chunk, IndexVersion, SourceFile

__all__ = [
    "visible_file",
    "existing_files",
    "set_roles",
    "count_chunks",
    "embeddings_by_hash",
    "shared_embeddings",
    "write_files",
    "vector_literal",
    "storable",
]


# --- files, chunks, embeddings -----------------------------------------------------------------


def visible_file(conn: Connection, repo: int, path: str) -> tuple[str, bool] | None:
    """(content hash, decode_errors) of `path` in the repository's current snapshot; None if it holds no such file."""
    row = conn.execute(
        sa.text(
            "SELECT f.content_hash, f.decode_errors FROM files f JOIN repositories r ON r.id = f.repo_id "
            "WHERE f.repo_id = :r AND f.path = :p AND f.snapshot_id <= r.current_snapshot_id "
            "ORDER BY f.snapshot_id DESC LIMIT 1"
        ),
        {"r": repo, "p": path},
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def existing_files(conn: Connection, repo: int) -> dict[tuple[str, str], tuple[int, int, str]]:
    """Every stored (path, content hash) of the repository, visible or left by a failed run: (id, snapshot, role)."""
    rows = conn.execute(
        sa.text("SELECT path, content_hash, id, snapshot_id, role FROM files WHERE repo_id = :r"), {"r": repo}
    )
    return {(path, h): (fid, snap, role) for path, h, fid, snap, role in rows}


def set_roles(conn: Connection, roles: Sequence[tuple[int, str]]) -> None:
    """(file id, role) for kept files whose role this release classifies differently."""
    if roles:
        conn.execute(
            sa.text(
                "UPDATE files SET role = v.role "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:roles AS text[])) AS v(id, role) "
                "WHERE files.id = v.id"
            ),
            {"ids": [fid for fid, _ in roles], "roles": [role for _, role in roles]},
        )


def count_chunks(conn: Connection, file_ids: Sequence[int]) -> int:
    return conn.execute(
        sa.text("SELECT count(*) FROM chunks WHERE file_id = ANY(:ids)"), {"ids": list(file_ids)}
    ).scalar_one()


def embeddings_by_hash(conn: Connection, repo: int, version: int, hashes: Sequence[str]) -> dict[str, np.ndarray]:
    """Vectors already computed in this version for chunks of equal content: they need no encoder pass."""
    if not hashes:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT ON (c.content_hash) c.content_hash, e.embedding::text FROM chunks c "
            "JOIN embeddings e ON e.chunk_id = c.id AND e.index_version_id = :v "
            "WHERE c.repo_id = :r AND c.content_hash = ANY(:h)"
        ),
        {"r": repo, "v": version, "h": list(hashes)},
    )
    return {h: np.array(json.loads(v), dtype=np.float32) for h, v in rows}


def shared_embeddings(conn: Connection, repo: int, *, encoder: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
    """Vectors of equal chunks in `repo`'s family (it, the repository it was derived from, and their eval
    indexes), made by the same encoder: a derived eval index needs no encoder pass for the code it shares.

    Never across unrelated repositories: the counts of vectors reused (which a user sees for a repository
    they may re-ingest) would tell them whether another repository holds a chunk they guessed. The encoder
    name is a local path or a checkpoint of one training run, so equal names mean equal weights."""
    if not hashes:
        return {}
    rows = conn.execute(
        sa.text(
            """
            WITH root AS (SELECT coalesce(derived_from, id) AS id FROM repositories WHERE id = :r),
                 family AS (SELECT r.id FROM repositories r, root WHERE r.id = root.id OR r.derived_from = root.id)
            SELECT DISTINCT ON (c.content_hash) c.content_hash, e.embedding::text FROM chunks c
            JOIN embeddings e ON e.chunk_id = c.id
            JOIN index_versions v ON v.id = e.index_version_id AND v.encoder = :enc
            WHERE c.content_hash = ANY(:h) AND c.repo_id IN (SELECT id FROM family)
            """
        ),
        {"enc": encoder, "h": list(hashes), "r": repo},
    )
    return {h: np.array(json.loads(v), dtype=np.float32) for h, v in rows}


def _next_ids(conn: Connection, table: str, n: int) -> list[int]:
    return list(
        conn.execute(
            sa.text(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, :n)"),
            {"n": n},
        ).scalars()
    )


def write_files(
    conn: Connection,
    repo: int,
    snapshot: int,
    version: IndexVersion,
    *,
    files: Sequence[tuple[SourceFile, Sequence[Chunk]]],
    vectors: np.ndarray,
) -> list[int]:
    """Bulk-write files (with their role), their chunks, each chunk's BM25 postings and one vector per chunk
    (in order) with COPY. Returns the file ids. The BM25 statistics change when the snapshot becomes current."""
    file_ids = _next_ids(conn, "files", len(files))
    n_chunks = sum(len(chunks) for _, chunks in files)
    chunk_ids = _next_ids(conn, "chunks", n_chunks)
    raw = conn.connection.driver_connection
    cur = raw.cursor()
    with cur.copy(
        "COPY files (id, repo_id, snapshot_id, path, language, content_hash, size, decode_errors, role) FROM STDIN"
    ) as copy:
        for fid, (f, _) in zip(file_ids, files):
            copy.write_row((fid, repo, snapshot, f.path, f.language, f.index_hash, f.size, f.decode_errors, f.role))
    ids = iter(chunk_ids)
    postings: list[tuple] = []
    with cur.copy(
        "COPY chunks (id, file_id, repo_id, ordinal, start_byte, end_byte, start_line, end_line, kind, symbol, "
        "context, text, token_count, content_hash, bm25_length) FROM STDIN"
    ) as copy:
        for fid, (f, chunks) in zip(file_ids, files):
            for ordinal, c in enumerate(chunks):
                cid = next(ids)
                terms = chunk_tokens(f.path, c.text)
                postings.extend((repo, t, cid, snapshot, tf, len(terms)) for t, tf in Counter(terms).items())
                copy.write_row(
                    (
                        cid,
                        fid,
                        repo,
                        ordinal,
                        c.start_byte,
                        c.end_byte,
                        c.start_line,
                        c.end_line,
                        c.kind,
                        c.symbol,
                        c.context,
                        c.text,
                        c.token_count,
                        c.content_hash,
                        len(terms),
                    )
                )
    with cur.copy("COPY bm25_postings (repo_id, term, chunk_id, snapshot_id, tf, dl) FROM STDIN") as copy:
        for row in postings:
            copy.write_row(row)
    storable(vectors, version.encoder)
    with cur.copy("COPY embeddings (index_version_id, chunk_id, embedding) FROM STDIN") as copy:
        for cid, vec in zip(chunk_ids, vectors):
            copy.write_row((version.id, cid, vector_literal(vec)))
    return file_ids


# How an index version's vectors are stored and searched: half-precision floats (pgvector's halfvec), half the
# disk and HNSW memory of `vector` at the same ranking (bench/vectors.py measures both; migration 0012).
VECTOR_TYPE = "halfvec"
VECTOR_OPS = "halfvec_ip_ops"
HALF_MAX = 65504.0  # the largest finite 16-bit float


def storable(vectors: np.ndarray, encoder: str) -> None:
    """Refuse vectors `halfvec` cannot hold (not finite, or beyond +-65504) before a write fails on them."""
    vectors = np.asarray(vectors)
    if vectors.size and not (np.isfinite(vectors).all() and np.abs(vectors).max() <= HALF_MAX):
        raise IngestError(
            f"encoder {encoder!r} produced vectors that are not finite or exceed {HALF_MAX:g}, which the index "
            "stores as 16-bit floats; grounding's encoders normalise their vectors: normalise this one's too"
        )


def vector_literal(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vec.tolist()) + "]"
