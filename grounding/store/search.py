"""Hybrid search in one SQL statement: HNSW, full-text and trigram rankings fused by reciprocal rank.

Each ranking is a CTE over the repository's visible chunks, cut to `candidates` rows; `fused` sums
1 / (rrf_k + rank) per chunk. The costs were measured with bench/query.py over 100k chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grounding.records import Citation, Hit, IndexVersion
from grounding.store.writes import vector_literal

__all__ = ["hybrid_search"]

RARE_ROWS = 2000  # lexical candidates come from the rarest query lexemes, up to about this many rows
TRIGRAM_POOL = 4  # times `candidates`: symbols scored with word_similarity

_VISIBLE = "f.repo_id = :r AND f.snapshot_id <= (SELECT current_snapshot_id FROM repositories WHERE id = :r)"


def _vector_cte(conn: Connection, version: IndexVersion, query_vector: np.ndarray, params: dict) -> str:
    """Nearest chunks by inner product through the version's partial HNSW index."""
    vid, dim = int(version.id), int(version.dim)  # literals, so the planner matches the partial index
    params["q"] = vector_literal(query_vector)
    conn.execute(sa.text("SET LOCAL hnsw.ef_search = 100"))
    conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))  # the visibility filter may drop rows
    return f"""vec AS (
        SELECT id, row_number() OVER (ORDER BY d) AS r FROM (
            SELECT c.id, e.embedding::vector({dim}) <#> CAST(:q AS vector({dim})) AS d
            FROM embeddings e JOIN chunks c ON c.id = e.chunk_id JOIN files f ON f.id = c.file_id
            WHERE e.index_version_id = {vid} AND {_VISIBLE}
            ORDER BY d LIMIT :n) s)"""


def _lexical_ctes(tsquery: str, params: dict) -> str:
    """Full-text ranking by ts_rank over the whole OR query, of candidates that hold one of its rarest lexemes.

    A lexeme in a third of all chunks ("test", "valu") would otherwise make ts_rank read and score tens
    of thousands of rows. Frequencies come from the planner's statistics of chunks.search; before the
    first ANALYZE every estimate is 0 and every lexeme is kept, which is the plain OR query.
    """
    params["tsq"] = tsquery
    params["rare_rows"] = RARE_ROWS
    return f"""lex_df AS (
        SELECT l.lexeme, coalesce(s.freq, 0) * greatest((SELECT reltuples FROM pg_class
                                                         WHERE oid = 'chunks'::regclass), 0) AS est
        FROM unnest(tsvector_to_array(to_tsvector('english', replace(:tsq, ' | ', ' ')))) AS l(lexeme)
        LEFT JOIN (SELECT e.lexeme, e.freq FROM pg_stats p,
                          unnest(p.most_common_elems::text::text[], p.most_common_elem_freqs) AS e(lexeme, freq)
                   WHERE p.schemaname = current_schema() AND p.tablename = 'chunks' AND p.attname = 'search') s
               USING (lexeme)),
    lex_rare AS (
        SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS q FROM (
            SELECT lexeme, row_number() OVER w AS i, sum(est) OVER w AS cum
            FROM lex_df WINDOW w AS (ORDER BY est, lexeme)) t
        WHERE i = 1 OR cum <= :rare_rows),
    lex AS (
        SELECT id, row_number() OVER (ORDER BY rank DESC, id) AS r FROM (
            SELECT c.id, ts_rank(c.search, q) AS rank
            FROM chunks c JOIN files f ON f.id = c.file_id, to_tsquery('english', :tsq) q
            WHERE c.repo_id = :r AND c.search @@ (SELECT q FROM lex_rare) AND {_VISIBLE}
            ORDER BY rank DESC, c.id LIMIT :n) s)"""


def _trigram_cte(fragments: Sequence[str], candidates: int, params: dict) -> str:
    """Symbols that contain the question's identifier fragments: most fragments first, then closest, then shortest."""
    n = range(len(fragments))
    likes = " OR ".join(f"c.symbol ILIKE :p{i}" for i in n)
    matched = " + ".join(f"(c.symbol ILIKE :p{i})::int" for i in n)
    sims = " + ".join(f"word_similarity(:t{i}, c.symbol)" for i in n)
    for i, frag in enumerate(fragments):
        params[f"p{i}"] = "%" + frag.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        params[f"t{i}"] = frag
    params["pool"] = TRIGRAM_POOL * candidates
    # word_similarity costs microseconds a row; a common fragment matches thousands of symbols.
    return f"""tri AS (
        SELECT id, row_number() OVER (ORDER BY matched DESC, sim DESC, len, id) AS r FROM (
            SELECT c.id, c.matched, {sims} AS sim, length(c.symbol) AS len
            FROM (SELECT c.id, c.symbol, {matched} AS matched
                  FROM chunks c JOIN files f ON f.id = c.file_id
                  WHERE c.repo_id = :r AND ({likes}) AND {_VISIBLE}
                  ORDER BY matched DESC, length(c.symbol), c.id LIMIT :pool) c
            ORDER BY matched DESC, sim DESC, len, c.id LIMIT :n) s)"""


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
    if use_vector and version is not None and query_vector is not None:
        ctes.append(_vector_cte(conn, version, query_vector, params))
        sources.append("SELECT id, r, 'v' AS src FROM vec")
    if use_lexical and tsquery:
        ctes.append(_lexical_ctes(tsquery, params))
        sources.append("SELECT id, r, 'l' AS src FROM lex")
    if use_trigram and fragments:
        ctes.append(_trigram_cte(fragments, candidates, params))
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
                repo="",
                path=path,
                start_line=sl,
                end_line=el,
                commit=None,
                score=float(score),
                snippet=text,
                symbol=symbol,
                kind=kind,
                language=language,
            ),
            score=float(score),
            vector_rank=vr,
            lexical_rank=lr,
            trigram_rank=tr,
        )
        for cid, path, sl, el, text, symbol, kind, language, score, vr, lr, tr in rows
    ]
