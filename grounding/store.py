"""The only module that issues SQL: repositories, snapshots, bulk writes with COPY, and hybrid search."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from grounding.errors import IngestBusy, RepoNotFound
from grounding.records import Chunk, Citation, Hit, IndexVersion, RepoInfo, SkippedFile, SourceFile

_LOCK_CLASS = 0x6772  # first key of the per-repository advisory lock


# --- locking -----------------------------------------------------------------------------------


@contextlib.contextmanager
def repo_lock(engine: Engine, name: str, *, wait: bool = True) -> Iterator[None]:
    """Hold the repository's advisory lock on a dedicated connection: ingests and reindexes never interleave."""
    with engine.connect() as conn:
        args = {"c": _LOCK_CLASS, "n": name}
        if wait:
            conn.execute(sa.text("SELECT pg_advisory_lock(:c, hashtext(:n))"), args)
        elif not conn.execute(sa.text("SELECT pg_try_advisory_lock(:c, hashtext(:n))"), args).scalar():
            raise IngestBusy(f"repository {name!r} is being ingested or reindexed by another run; try again when it ends")
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:c, hashtext(:n))"), args)
            conn.commit()


# --- repositories and snapshots ----------------------------------------------------------------


def repo_id(conn: Connection, name: str) -> int:
    """The id of an ingested repository; RepoNotFound names the known ones otherwise."""
    found = conn.execute(sa.text("SELECT id FROM repositories WHERE name = :n"), {"n": name}).scalar()
    if found is None:
        known = list(conn.execute(sa.text("SELECT name FROM repositories ORDER BY name")).scalars())
        raise RepoNotFound(name, known)
    return found


def repo_source(conn: Connection, name: str) -> tuple[str, str | None, str | None]:
    """(source, ref, commit of the current snapshot) of an ingested repository."""
    rid = repo_id(conn, name)
    row = conn.execute(
        sa.text(
            "SELECT r.source, r.ref, s.commit FROM repositories r "
            "LEFT JOIN snapshots s ON s.id = r.current_snapshot_id WHERE r.id = :r"
        ),
        {"r": rid},
    ).one()
    return row[0], row[1], row[2]


def repo_names(conn: Connection) -> list[str]:
    return list(conn.execute(sa.text("SELECT name FROM repositories ORDER BY name")).scalars())


def upsert_repo(conn: Connection, name: str, *, source: str, ref: str | None) -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO repositories (name, source, ref) VALUES (:n, :s, :r) "
            "ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, ref = EXCLUDED.ref RETURNING id"
        ),
        {"n": name, "s": source, "r": ref},
    ).scalar_one()


def begin_snapshot(conn: Connection, repo: int, *, commit: str | None, ref: str | None) -> int:
    """Open a running snapshot. Called under the repository lock, so a run still marked running has died."""
    conn.execute(
        sa.text(
            "UPDATE snapshots SET status = 'failed', finished_at = now(), "
            "error = 'interrupted: the run ended without finishing' WHERE repo_id = :r AND status = 'running'"
        ),
        {"r": repo},
    )
    return conn.execute(
        sa.text("INSERT INTO snapshots (repo_id, commit, ref, status) VALUES (:r, :c, :f, 'running') RETURNING id"),
        {"r": repo, "c": commit, "f": ref},
    ).scalar_one()


def fail_snapshot(conn: Connection, snapshot: int, *, error: str) -> None:
    conn.execute(
        sa.text("UPDATE snapshots SET status = 'failed', finished_at = now(), error = :e WHERE id = :s"),
        {"s": snapshot, "e": error[:4000]},
    )


def finish_snapshot(
    conn: Connection, repo: int, snapshot: int, *, keep_file_ids: Sequence[int], stats: dict,
    skipped: Sequence[SkippedFile],
) -> int:
    """Make the snapshot current: drop every file row it does not keep, move the pointer. Returns chunks removed."""
    removed = conn.execute(
        sa.text(
            "SELECT count(*) FROM chunks c JOIN files f ON f.id = c.file_id "
            "WHERE f.repo_id = :r AND NOT (f.id = ANY(:keep))"
        ),
        {"r": repo, "keep": list(keep_file_ids)},
    ).scalar_one()
    conn.execute(
        sa.text("DELETE FROM files WHERE repo_id = :r AND NOT (id = ANY(:keep))"),
        {"r": repo, "keep": list(keep_file_ids)},
    )
    stats = {**stats, "chunks_removed": removed}
    if skipped:
        raw = conn.connection.driver_connection
        with raw.cursor().copy("COPY skipped_files (snapshot_id, path, reason) FROM STDIN") as copy:
            for s in skipped:
                copy.write_row((snapshot, s.path, s.reason))
    conn.execute(
        sa.text(
            "UPDATE snapshots SET status = 'complete', finished_at = now(), stats = CAST(:st AS jsonb) WHERE id = :s"
        ),
        {"s": snapshot, "st": json.dumps(stats)},
    )
    conn.execute(sa.text("UPDATE repositories SET current_snapshot_id = :s WHERE id = :r"), {"s": snapshot, "r": repo})
    return removed


def list_repos(conn: Connection) -> list[RepoInfo]:
    rows = conn.execute(
        sa.text(
            """
            SELECT r.id, r.name, r.source, r.current_snapshot_id, s.commit, s.finished_at,
                   (SELECT count(*) FROM files f WHERE f.repo_id = r.id AND f.snapshot_id <= r.current_snapshot_id),
                   (SELECT count(*) FROM chunks c JOIN files f ON f.id = c.file_id
                     WHERE f.repo_id = r.id AND f.snapshot_id <= r.current_snapshot_id),
                   v.id, v.encoder, last.status, last.error
            FROM repositories r
            LEFT JOIN snapshots s ON s.id = r.current_snapshot_id
            LEFT JOIN index_versions v ON v.repo_id = r.id AND v.status = 'active'
            LEFT JOIN LATERAL (SELECT status, error FROM snapshots WHERE repo_id = r.id ORDER BY id DESC LIMIT 1) last
                   ON true
            ORDER BY r.name
            """
        )
    ).all()
    return [RepoInfo(*row) for row in rows]


def current_snapshot(conn: Connection, repo: int) -> tuple[int | None, str | None]:
    row = conn.execute(
        sa.text(
            "SELECT r.current_snapshot_id, s.commit FROM repositories r "
            "LEFT JOIN snapshots s ON s.id = r.current_snapshot_id WHERE r.id = :r"
        ),
        {"r": repo},
    ).one()
    return row[0], row[1]


def snapshot(conn: Connection, snapshot_id: int) -> dict:
    row = conn.execute(sa.text("SELECT * FROM snapshots WHERE id = :s"), {"s": snapshot_id}).mappings().one()
    return dict(row)


# --- index versions ----------------------------------------------------------------------------


def active_index_version(conn: Connection, repo: int) -> IndexVersion | None:
    row = conn.execute(
        sa.text("SELECT id, repo_id, encoder, dim, status FROM index_versions WHERE repo_id = :r AND status = 'active'"),
        {"r": repo},
    ).one_or_none()
    return IndexVersion(*row) if row else None


def building_index_version(conn: Connection, repo: int, *, encoder: str) -> IndexVersion | None:
    """A version left building by a failed first ingest with the same encoder: reused so its vectors are kept."""
    row = conn.execute(
        sa.text(
            "SELECT id, repo_id, encoder, dim, status FROM index_versions "
            "WHERE repo_id = :r AND status = 'building' AND encoder = :e ORDER BY id DESC LIMIT 1"
        ),
        {"r": repo, "e": encoder},
    ).one_or_none()
    return IndexVersion(*row) if row else None


def create_index_version(conn: Connection, repo: int, *, encoder: str, dim: int) -> IndexVersion:
    vid = conn.execute(
        sa.text(
            "INSERT INTO index_versions (repo_id, encoder, dim, status) VALUES (:r, :e, :d, 'building') RETURNING id"
        ),
        {"r": repo, "e": encoder, "d": dim},
    ).scalar_one()
    return IndexVersion(vid, repo, encoder, dim, "building")


def build_vector_index(conn: Connection, version: IndexVersion) -> None:
    """The version's own HNSW index (inner product), partial on its rows, with the dimension it needs."""
    vid, dim = int(version.id), int(version.dim)
    conn.execute(
        sa.text(
            f"CREATE INDEX IF NOT EXISTS embeddings_hnsw_v{vid} ON embeddings "
            f"USING hnsw ((embedding::vector({dim})) vector_ip_ops) WHERE index_version_id = {vid}"
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


# --- files, chunks, embeddings -----------------------------------------------------------------


def existing_files(conn: Connection, repo: int) -> dict[tuple[str, str], tuple[int, int]]:
    """Every stored (path, content hash) of the repository, visible or left by a failed run: (file id, snapshot)."""
    rows = conn.execute(
        sa.text("SELECT path, content_hash, id, snapshot_id FROM files WHERE repo_id = :r"), {"r": repo}
    )
    return {(path, h): (fid, snap) for path, h, fid, snap in rows}


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
    lexical_terms,
) -> list[int]:
    """Bulk-write files, their chunks and one vector per chunk (in order) with COPY. Returns the file ids."""
    file_ids = _next_ids(conn, "files", len(files))
    n_chunks = sum(len(chunks) for _, chunks in files)
    chunk_ids = _next_ids(conn, "chunks", n_chunks)
    raw = conn.connection.driver_connection
    cur = raw.cursor()
    with cur.copy(
        "COPY files (id, repo_id, snapshot_id, path, language, content_hash, size, decode_errors) FROM STDIN"
    ) as copy:
        for fid, (f, _) in zip(file_ids, files):
            copy.write_row((fid, repo, snapshot, f.path, f.language, f.content_hash, f.size, f.decode_errors))
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS chunk_stage (id bigint, file_id bigint, ordinal int, start_byte int, "
        "end_byte int, start_line int, end_line int, kind text, symbol text, context text, text text, "
        "token_count int, content_hash text, symbol_terms text, path_terms text, body_terms text) "
        "ON COMMIT DELETE ROWS"
    )
    ids = iter(chunk_ids)
    with cur.copy("COPY chunk_stage FROM STDIN") as copy:
        for fid, (f, chunks) in zip(file_ids, files):
            for ordinal, c in enumerate(chunks):
                symbol_terms, path_terms, body_terms = lexical_terms(c)
                copy.write_row((
                    next(ids), fid, ordinal, c.start_byte, c.end_byte, c.start_line, c.end_line, c.kind,
                    c.symbol, c.context, c.text, c.token_count, c.content_hash, symbol_terms, path_terms,
                    body_terms,
                ))
    cur.execute(
        "INSERT INTO chunks (id, file_id, repo_id, ordinal, start_byte, end_byte, start_line, end_line, kind, "
        "symbol, context, text, token_count, content_hash, search) "
        "SELECT id, file_id, %s, ordinal, start_byte, end_byte, start_line, end_line, kind, symbol, context, "
        "text, token_count, content_hash, "
        "setweight(to_tsvector('english', symbol_terms), 'A') || "
        "setweight(to_tsvector('english', path_terms), 'B') || "
        "setweight(to_tsvector('english', body_terms), 'D') FROM chunk_stage",
        (repo,),
    )
    with cur.copy("COPY embeddings (index_version_id, chunk_id, embedding) FROM STDIN") as copy:
        for cid, vec in zip(chunk_ids, vectors):
            copy.write_row((version.id, cid, _vector_literal(vec)))
    return file_ids


def _vector_literal(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vec.tolist()) + "]"


# --- search --------------------------------------------------------------------------------------


def hybrid_search(
    conn: Connection,
    repo: int,
    version: IndexVersion | None,
    *,
    query_vector: np.ndarray | None,
    tsquery: str,
    fragments: Sequence[str],
    candidates: int,
    rrf_k: int,
    k: int,
    use_vector: bool = True,
    use_lexical: bool = True,
    use_trigram: bool = True,
) -> list[Hit]:
    """Vector, full-text and trigram rankings of the visible chunks, fused by reciprocal rank in SQL."""
    params: dict = {"r": repo, "n": candidates, "k": k, "rrf": rrf_k}
    ctes, sources = [], []
    visible = "f.repo_id = :r AND f.snapshot_id <= (SELECT current_snapshot_id FROM repositories WHERE id = :r)"
    if use_vector and version is not None and query_vector is not None:
        vid, dim = int(version.id), int(version.dim)
        params["q"] = _vector_literal(query_vector)
        conn.execute(sa.text("SET LOCAL hnsw.ef_search = 100"))
        conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        ctes.append(
            f"""vec AS (
                SELECT id, row_number() OVER (ORDER BY d) AS r FROM (
                    SELECT c.id, e.embedding::vector({dim}) <#> CAST(:q AS vector({dim})) AS d
                    FROM embeddings e JOIN chunks c ON c.id = e.chunk_id JOIN files f ON f.id = c.file_id
                    WHERE e.index_version_id = {vid} AND {visible}
                    ORDER BY d LIMIT :n) s)"""
        )
        sources.append("SELECT id, r, 'v' AS src FROM vec")
    if use_lexical and tsquery:
        params["tsq"] = tsquery
        ctes.append(
            f"""lex AS (
                SELECT id, row_number() OVER (ORDER BY rank DESC, id) AS r FROM (
                    SELECT c.id, ts_rank(c.search, q) AS rank
                    FROM chunks c JOIN files f ON f.id = c.file_id, to_tsquery('english', :tsq) q
                    WHERE c.repo_id = :r AND c.search @@ q AND {visible}
                    ORDER BY rank DESC, c.id LIMIT :n) s)"""
        )
        sources.append("SELECT id, r, 'l' AS src FROM lex")
    if use_trigram and fragments:
        likes = " OR ".join(f"c.symbol ILIKE :p{i}" for i in range(len(fragments)))
        matched = " + ".join(f"(c.symbol ILIKE :p{i})::int" for i in range(len(fragments)))
        sims = " + ".join(f"word_similarity(:t{i}, c.symbol)" for i in range(len(fragments)))
        for i, frag in enumerate(fragments):
            params[f"p{i}"] = "%" + frag.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            params[f"t{i}"] = frag
        ctes.append(
            f"""tri AS (
                SELECT id, row_number() OVER (ORDER BY matched DESC, sim DESC, len, id) AS r FROM (
                    SELECT c.id, {matched} AS matched, {sims} AS sim, length(c.symbol) AS len
                    FROM chunks c JOIN files f ON f.id = c.file_id
                    WHERE c.repo_id = :r AND ({likes}) AND {visible}
                    ORDER BY matched DESC, sim DESC, len, c.id LIMIT :n) s)"""
        )
        sources.append("SELECT id, r, 't' AS src FROM tri")
    if not sources:
        return []
    sql = f"""
        WITH {", ".join(ctes)},
        ranked AS ({" UNION ALL ".join(sources)}),
        fused AS (
            SELECT id, sum(1.0 / (:rrf + r)) AS score,
                   min(r) FILTER (WHERE src = 'v') AS vr, min(r) FILTER (WHERE src = 'l') AS lr,
                   min(r) FILTER (WHERE src = 't') AS tr
            FROM ranked GROUP BY id ORDER BY score DESC, id LIMIT :k)
        SELECT c.id, f.path, c.start_line, c.end_line, c.text, c.symbol, c.kind, f.language,
               fused.score, fused.vr, fused.lr, fused.tr
        FROM fused JOIN chunks c ON c.id = fused.id JOIN files f ON f.id = c.file_id
        ORDER BY fused.score DESC, c.id
    """
    rows = conn.execute(sa.text(sql), params).all()
    return [
        Hit(
            chunk_id=cid,
            citation=Citation(
                repo="", path=path, start_line=sl, end_line=el, commit=None, score=float(score), snippet=text,
                symbol=symbol, kind=kind, language=language,
            ),
            score=float(score),
            vector_rank=vr,
            lexical_rank=lr,
            trigram_rank=tr,
        )
        for cid, path, sl, el, text, symbol, kind, language, score, vr, lr, tr in rows
    ]


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
    raw = conn.connection.driver_connection
    with raw.cursor().copy("COPY embeddings (index_version_id, chunk_id, embedding) FROM STDIN") as copy:
        for cid, vec in zip(chunk_ids, vectors):
            copy.write_row((version.id, cid, _vector_literal(vec)))


def nearest_in_version(conn: Connection, version: IndexVersion, vector: np.ndarray, *, k: int) -> list[tuple[int, float]]:
    """(chunk id, inner product) nearest to `vector` through the version's own HNSW index, before activation."""
    vid, dim = int(version.id), int(version.dim)
    conn.execute(sa.text("SET LOCAL hnsw.ef_search = 100"))
    rows = conn.execute(
        sa.text(
            f"SELECT chunk_id, -(embedding::vector({dim}) <#> CAST(:q AS vector({dim}))) AS ip "
            f"FROM embeddings WHERE index_version_id = {vid} "
            f"ORDER BY embedding::vector({dim}) <#> CAST(:q AS vector({dim})) LIMIT :k"
        ),
        {"q": _vector_literal(vector), "k": k},
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
    left by a run that died.
    """
    rows = conn.execute(
        sa.text(
            "SELECT id, status FROM index_versions v WHERE repo_id = :r AND ("
            " (status = 'retired' AND retired_at < now() - make_interval(secs => :g))"
            " OR (status = 'building' AND EXISTS (SELECT 1 FROM index_versions a WHERE a.repo_id = :r"
            "     AND a.status = 'active'))"
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
            "SELECT v.id, v.encoder, v.dim, v.status, v.created_at, v.activated_at, v.retired_at, v.note, "
            "(SELECT count(*) FROM embeddings e WHERE e.index_version_id = v.id) AS vectors "
            "FROM index_versions v WHERE repo_id = :r ORDER BY v.id"
        ),
        {"r": repo},
    ).mappings()
    return [dict(row) for row in rows]
