"""RETRO retrieval databases: their rows, chunks (written with COPY), per-database HNSW index and neighbour cache.

Each database's chunks get a partial HNSW index over `embedding::vector(dim)`, like an index
version's; the queries that should use it name the database id as a literal, so the planner can
match the index's predicate. Training reads train chunks only (an iterative scan skips the others);
a completion reads every file of the snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grounding.store.writes import vector_literal

__all__ = [
    "create_retro_database",
    "retro_database",
    "latest_retro_database",
    "matching_retro_database",
    "copy_retro_chunks",
    "build_retro_index",
    "finish_retro_database",
    "fail_retro_database",
    "collect_retro_databases",
    "retro_chunks",
    "retro_chunk_ids",
    "retro_chunks_with_continuation",
    "retro_chunks_around",
    "retro_paths_gone",
    "ready_retro_databases",
    "retro_file_texts",
    "lock_retro_database",
    "advance_retro_database",
    "recount_retro_database",
    "nearest_retro_chunks",
    "retro_neighbours_of",
    "cached_retro_neighbours",
    "write_retro_neighbours",
]

_DATABASE = (
    "SELECT d.id, r.name AS repo, d.commit, d.tokenizer, d.chunk_tokens, d.encoder, d.dim, d.status, "
    "d.snapshot_id, d.stats FROM retro_databases d JOIN repositories r ON r.id = d.repo_id "
)
_CHUNK = "id, path, split, ordinal, tokens, text, start_line, end_line"
# Iterative scans keep walking the graph until enough rows pass the filters (pgvector 0.8), so a
# query that excludes a path still gets k rows; ef_search sets how wide each step looks.
_EF_SEARCH = 100


# --- databases -----------------------------------------------------------------------------------


def create_retro_database(
    conn: Connection,
    repo: int,
    *,
    snapshot: int | None,
    commit: str | None,
    tokenizer: str,
    chunk_tokens: int,
    encoder: str,
    dim: int,
    stats: Mapping,
) -> int:
    """A new database row, `building`."""
    return conn.execute(
        sa.text(
            "INSERT INTO retro_databases (repo_id, snapshot_id, commit, tokenizer, chunk_tokens, encoder, dim, "
            "status, stats) VALUES (:r, :s, :c, :t, :m, :e, :d, 'building', CAST(:st AS jsonb)) RETURNING id"
        ),
        {
            "r": repo,
            "s": snapshot,
            "c": commit,
            "t": tokenizer,
            "m": chunk_tokens,
            "e": encoder,
            "d": dim,
            "st": json.dumps(dict(stats)),
        },
    ).scalar_one()


def retro_database(conn: Connection, database_id: int) -> dict | None:
    """Any database by id, whatever its status."""
    row = conn.execute(sa.text(_DATABASE + "WHERE d.id = :d"), {"d": database_id}).mappings().one_or_none()
    return dict(row) if row else None


def latest_retro_database(
    conn: Connection,
    repo: int,
    *,
    tokenizer: str | None = None,
    chunk_tokens: int | None = None,
    encoder: str | None = None,
) -> dict | None:
    """The newest ready database of a repository, of one tokenizer, chunk length m and encoder if named."""
    row = (
        conn.execute(
            sa.text(
                _DATABASE + "WHERE d.repo_id = :r AND d.status = 'ready' "
                "AND (CAST(:t AS text) IS NULL OR d.tokenizer = :t) "
                "AND (CAST(:m AS integer) IS NULL OR d.chunk_tokens = :m) "
                "AND (CAST(:e AS text) IS NULL OR d.encoder = :e) ORDER BY d.id DESC LIMIT 1"
            ),
            {"r": repo, "t": tokenizer, "m": chunk_tokens, "e": encoder},
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


def matching_retro_database(
    conn: Connection, repo: int, *, tokenizer: str, chunk_tokens: int, encoder: str, fingerprint: str
) -> dict | None:
    """A ready database built from the same files with the same tokenizer, chunk length and encoder."""
    row = (
        conn.execute(
            sa.text(
                _DATABASE + "WHERE d.repo_id = :r AND d.status = 'ready' AND d.tokenizer = :t "
                "AND d.chunk_tokens = :m AND d.encoder = :e AND d.stats ->> 'fingerprint' = :f "
                "ORDER BY d.id DESC LIMIT 1"
            ),
            {"r": repo, "t": tokenizer, "m": chunk_tokens, "e": encoder, "f": fingerprint},
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


def copy_retro_chunks(
    conn: Connection,
    database_id: int,
    *,
    chunks: Iterable[tuple[str, str, int, Sequence[int], str, int, int]],
    vectors: np.ndarray,
) -> int:
    """COPY (path, split, ordinal, tokens, text, start_line, end_line) rows with one vector each, in order."""
    raw = conn.connection.driver_connection
    n = 0
    with raw.cursor().copy(
        "COPY retro_chunks (database_id, path, split, ordinal, tokens, text, start_line, end_line, embedding) "
        "FROM STDIN"
    ) as copy:
        for (path, split, ordinal, tokens, text, start, end), vec in zip(chunks, vectors, strict=True):
            ids = "{" + ",".join(map(str, tokens)) + "}"
            copy.write_row((database_id, path, split, ordinal, ids, text, start, end, vector_literal(vec)))
            n += 1
    return n


def build_retro_index(conn: Connection, database_id: int, *, dim: int) -> None:
    """The database's own HNSW index (inner product) over all its chunks, train and held-out."""
    did, dim = int(database_id), int(dim)
    conn.execute(sa.text(retro_index_sql(did, dim)))
    conn.execute(sa.text("ANALYZE retro_chunks"))


def ready_retro_databases(conn: Connection, repo: int) -> list[dict]:
    """The repository's ready databases, oldest first."""
    rows = conn.execute(sa.text(_DATABASE + "WHERE d.repo_id = :r AND d.status = 'ready' ORDER BY d.id"), {"r": repo})
    return [dict(row) for row in rows.mappings()]


def retro_file_texts(conn: Connection, database_id: int) -> dict[str, str]:
    """Each path's chunk texts joined in order: the file's text as the database holds it."""
    rows = conn.execute(
        sa.text(
            "SELECT path, string_agg(text, '' ORDER BY ordinal) FROM retro_chunks WHERE database_id = :d GROUP BY path"
        ),
        {"d": int(database_id)},
    )
    return dict(rows.all())


def lock_retro_database(conn: Connection, database_id: int, *, before: int, fingerprint: str | None) -> bool:
    """Lock the database's row for this transaction if it is ready, behind snapshot `before` and still holds
    `fingerprint` (nobody wrote it since it was read); else False. The chunk table's write lock is taken
    first, as a build's last transaction takes it before the rows it retires, so the two never deadlock."""
    conn.execute(sa.text("LOCK TABLE retro_chunks IN ROW EXCLUSIVE MODE"))
    current = conn.execute(
        sa.text(
            "SELECT snapshot_id, stats ->> 'fingerprint' FROM retro_databases WHERE id = :d AND status = 'ready' "
            "FOR UPDATE"
        ),
        {"d": int(database_id)},
    ).one_or_none()
    if current is None or current[1] != fingerprint:
        return False
    return current[0] is None or current[0] < before


def advance_retro_database(
    conn: Connection, database_id: int, *, snapshot: int, commit: str | None, paths: Sequence[str], stats: Mapping
) -> None:
    """Drop the chunks of `paths` (their new rows are copied after) and move the database to `snapshot`; its
    cached neighbours go too (training recomputes them). Inside the transaction of `lock_retro_database`."""
    conn.execute(
        sa.text("DELETE FROM retro_chunks WHERE database_id = :d AND path = ANY(:p)"),
        {"d": int(database_id), "p": list(paths)},
    )
    conn.execute(sa.text("DELETE FROM retro_neighbours WHERE database_id = :d"), {"d": int(database_id)})
    conn.execute(
        sa.text(
            "UPDATE retro_databases SET snapshot_id = :s, commit = :c, stats = stats || CAST(:st AS jsonb) "
            "WHERE id = :d"
        ),
        {"d": int(database_id), "s": snapshot, "c": commit, "st": json.dumps(dict(stats))},
    )


def recount_retro_database(conn: Connection, database_id: int) -> None:
    """The database's chunk, train/held-out and token counts in its stats, counted again from its rows."""
    conn.execute(
        sa.text(
            "UPDATE retro_databases d SET stats = d.stats || jsonb_build_object('chunks', c.n, 'train_chunks', c.t, "
            "'heldout_chunks', c.n - c.t, 'tokens', c.tokens) FROM (SELECT count(*) AS n, "
            "count(*) FILTER (WHERE split = 'train') AS t, coalesce(sum(cardinality(tokens)), 0) AS tokens "
            "FROM retro_chunks WHERE database_id = :d) c WHERE d.id = :d"
        ),
        {"d": int(database_id)},
    )


def retro_paths_gone(conn: Connection, database_id: int, repo: int) -> list[str]:
    """Paths the database holds that the repository's current snapshot no longer does (deleted or moved since)."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT c.path FROM retro_chunks c WHERE c.database_id = :d AND NOT EXISTS ("
            " SELECT 1 FROM files f JOIN repositories r ON r.id = f.repo_id WHERE f.repo_id = :r"
            " AND f.path = c.path AND f.snapshot_id <= r.current_snapshot_id) ORDER BY c.path"
        ),
        {"d": int(database_id), "r": int(repo)},
    )
    return [path for (path,) in rows]


def retro_index_sql(database_id: int, dim: int) -> str:
    did, dim = int(database_id), int(dim)
    return (
        f"CREATE INDEX IF NOT EXISTS retro_chunks_hnsw_d{did} ON retro_chunks "
        f"USING hnsw ((embedding::vector({dim})) vector_ip_ops) WHERE database_id = {did}"
    )


def finish_retro_database(conn: Connection, database_id: int, *, stats: Mapping) -> list[int]:
    """Mark the database ready and retire the ready ones it replaces (same repository, tokenizer, m and
    encoder) in the same transaction. Returns the retired ids."""
    retired = list(
        conn.execute(
            sa.text(
                "UPDATE retro_databases o SET status = 'retired', note = coalesce(o.note, 'replaced by ' || n.id), "
                "stats = o.stats || jsonb_build_object('retired_at', extract(epoch FROM now())) "
                "FROM retro_databases n WHERE n.id = :d AND o.id <> n.id AND o.status = 'ready' "
                "AND o.repo_id = n.repo_id AND o.tokenizer = n.tokenizer AND o.chunk_tokens = n.chunk_tokens "
                "AND o.encoder = n.encoder RETURNING o.id"
            ),
            {"d": database_id},
        ).scalars()
    )
    conn.execute(
        sa.text("UPDATE retro_databases SET status = 'ready', stats = stats || CAST(:s AS jsonb) WHERE id = :d"),
        {"d": database_id, "s": json.dumps(dict(stats))},
    )
    return retired


def fail_retro_database(conn: Connection, database_id: int, *, error: str) -> None:
    """Give up a build: its chunks and index go, its row stays with the reason."""
    did = int(database_id)
    conn.execute(sa.text(f"DROP INDEX IF EXISTS retro_chunks_hnsw_d{did}"))
    conn.execute(sa.text("DELETE FROM retro_chunks WHERE database_id = :d"), {"d": did})
    conn.execute(
        sa.text("UPDATE retro_databases SET status = 'failed', note = :e WHERE id = :d"),
        {"d": did, "e": error[:4000]},
    )


def collect_retro_databases(conn: Connection, repo: int, *, older_than_seconds: float) -> list[int]:
    """Drop the chunks, neighbours and index of the repository's databases retired longer ago than that.

    Completion reads the newest ready database; one retired a while ago serves nothing. Its row stays,
    `collected`, with its stats. Returns the collected ids."""
    ids = list(
        conn.execute(
            sa.text(
                "SELECT id FROM retro_databases WHERE repo_id = :r AND status = 'retired' "
                "AND coalesce((stats->>'retired_at')::float8, 0) <= extract(epoch FROM now()) - :g ORDER BY id"
            ),
            {"r": repo, "g": float(older_than_seconds)},
        ).scalars()
    )
    for did in ids:
        conn.execute(sa.text(f"DROP INDEX IF EXISTS retro_chunks_hnsw_d{int(did)}"))
        conn.execute(sa.text("DELETE FROM retro_neighbours WHERE database_id = :d"), {"d": did})
        conn.execute(sa.text("DELETE FROM retro_chunks WHERE database_id = :d"), {"d": did})
        conn.execute(sa.text("UPDATE retro_databases SET status = 'collected' WHERE id = :d"), {"d": did})
    return ids


# --- chunks --------------------------------------------------------------------------------------


def retro_chunks(conn: Connection, database_id: int, *, split: str | None = None) -> list[tuple]:
    """(id, path, split, ordinal, tokens, text, start_line, end_line) of a database, in (path, ordinal) order."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_CHUNK} FROM retro_chunks WHERE database_id = :d "
            "AND (CAST(:s AS text) IS NULL OR split = :s) ORDER BY path, ordinal"
        ),
        {"d": database_id, "s": split},
    )
    return [tuple(row) for row in rows]


def retro_chunk_ids(conn: Connection, database_id: int) -> list[int]:
    """Every chunk id of a database, in (path, ordinal) order."""
    return list(
        conn.execute(
            sa.text("SELECT id FROM retro_chunks WHERE database_id = :d ORDER BY path, ordinal"), {"d": database_id}
        ).scalars()
    )


def retro_chunks_with_continuation(conn: Connection, database_id: int, chunk_ids: Sequence[int]) -> dict[int, tuple]:
    """Per chunk id of the database: (path, start_line, end_line, tokens, text) of the chunk followed by the
    next one of its file."""
    rows = conn.execute(
        sa.text(
            "SELECT c.id, c.path, c.start_line, coalesce(n.end_line, c.end_line), "
            "c.tokens || coalesce(n.tokens, '{}'), c.text || coalesce(n.text, '') "
            "FROM retro_chunks c LEFT JOIN retro_chunks n "
            "ON n.database_id = c.database_id AND n.path = c.path AND n.ordinal = c.ordinal + 1 "
            "WHERE c.database_id = :d AND c.id = ANY(:ids)"
        ),
        {"d": database_id, "ids": list(chunk_ids)},
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def retro_chunks_around(conn: Connection, database_id: int, chunk_ids: Sequence[int]) -> dict[int, tuple[list, int]]:
    """Per chunk id of the database: (tokens of the chunk before it, itself and the two after it in its file,
    where the chunk starts in them): what a neighbour aligned to its retrieving chunk is cut from."""
    rows = conn.execute(
        sa.text(
            "SELECT h.id, c.ordinal - h.ordinal, c.tokens FROM retro_chunks h JOIN retro_chunks c "
            "ON c.database_id = h.database_id AND c.path = h.path "
            "AND c.ordinal BETWEEN h.ordinal - 1 AND h.ordinal + 2 "
            "WHERE h.database_id = :d AND h.id = ANY(:ids) ORDER BY h.id, c.ordinal"
        ),
        {"d": database_id, "ids": list(chunk_ids)},
    )
    out: dict[int, tuple[list, int]] = {}
    for cid, offset, tokens in rows:
        stream, start = out.get(cid, ([], 0))
        if offset == 0:
            start = len(stream)
        out[cid] = ([*stream, *tokens], start)
    return out


# --- nearest neighbours --------------------------------------------------------------------------


def _iterative_scan(conn: Connection, k: int) -> None:
    conn.execute(sa.text(f"SET LOCAL hnsw.ef_search = {max(_EF_SEARCH, 2 * int(k))}"))
    conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))


def nearest_retro_chunks(
    conn: Connection,
    database_id: int,
    *,
    dim: int,
    vector: np.ndarray,
    k: int,
    exclude_paths: Sequence[str] = (),
    train_only: bool = True,
) -> list[tuple[int, float]]:
    """(chunk id, inner product) of the k chunks nearest `vector` (train chunks only unless `train_only` is
    false), outside `exclude_paths`, nearest first. Call inside a transaction: the scan settings are local to it.
    """
    did, dim = int(database_id), int(dim)
    _iterative_scan(conn, k)
    other_file = ("AND path <> ALL(:p) " if exclude_paths else "") + ("AND split = 'train' " if train_only else "")
    # relaxed_order may hand rows back slightly out of order: the outer query sorts the k it got.
    rows = conn.execute(
        sa.text(
            f"WITH nearest AS MATERIALIZED (SELECT id, embedding::vector({dim}) <#> CAST(:q AS vector({dim})) AS d "
            f"FROM retro_chunks WHERE database_id = {did} {other_file}"
            f"ORDER BY embedding::vector({dim}) <#> CAST(:q AS vector({dim})) LIMIT :k) "
            "SELECT id, -d FROM nearest ORDER BY d, id"
        ),
        {"q": vector_literal(vector), "k": k, "p": list(exclude_paths)},
    )
    return [(cid, float(ip)) for cid, ip in rows]


def retro_neighbours_of(
    conn: Connection, database_id: int, *, dim: int, chunk_ids: Sequence[int], k: int
) -> dict[int, list[int]]:
    """For each chunk, the ids of the k nearest train chunks of other files, nearest first: one HNSW
    search per chunk, all in one statement. Call inside a transaction."""
    did, dim = int(database_id), int(dim)
    _iterative_scan(conn, k)
    rows = conn.execute(
        sa.text(
            "SELECT q.id, n.ids FROM retro_chunks q CROSS JOIN LATERAL ("
            " SELECT array_agg(id ORDER BY d, id) AS ids FROM ("
            f"  SELECT c.id, c.embedding::vector({dim}) <#> q.embedding::vector({dim}) AS d FROM retro_chunks c"
            f"  WHERE c.database_id = {did} AND c.split = 'train' AND c.path <> q.path"
            f"  ORDER BY c.embedding::vector({dim}) <#> q.embedding::vector({dim}) LIMIT :k) found) n "
            f"WHERE q.database_id = {did} AND q.id = ANY(:ids)"
        ),
        {"ids": list(chunk_ids), "k": k},
    )
    return {cid: list(ids or []) for cid, ids in rows}


# --- the neighbour cache -------------------------------------------------------------------------


def cached_retro_neighbours(conn: Connection, database_id: int, *, config_key: str) -> dict[int, list[int]]:
    rows = conn.execute(
        sa.text("SELECT chunk_id, neighbours FROM retro_neighbours WHERE database_id = :d AND config_key = :k"),
        {"d": database_id, "k": config_key},
    )
    return {cid: list(ids) for cid, ids in rows}


def write_retro_neighbours(
    conn: Connection, database_id: int, *, config_key: str, neighbours: Mapping[int, Sequence[int]]
) -> None:
    """COPY the neighbours of some chunks into the cache."""
    raw = conn.connection.driver_connection
    with raw.cursor().copy("COPY retro_neighbours (database_id, config_key, chunk_id, neighbours) FROM STDIN") as copy:
        for cid, ids in neighbours.items():
            copy.write_row((database_id, config_key, cid, "{" + ",".join(map(str, ids)) + "}"))
