"""Hybrid search in one SQL statement: HNSW, full-text and trigram rankings fused by reciprocal rank.

Each ranking is a CTE over the repository's visible chunks, cut to `candidates` rows; `fused` sums
1 / (rrf_k + rank) per chunk. The costs were measured with bench/query.py over 100k chunks.
Filters (path regexes, languages, kinds) sit inside every ranking, so a selective filter still
leaves `candidates` rows to fuse rather than cutting the fused list afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grounding.records import Citation, Hit, IndexVersion
from grounding.store.writes import vector_literal

__all__ = ["hybrid_search", "symbol_parts", "ChunkSpan", "ChunkFilter"]

RARE_ROWS = 2000  # lexical candidates come from the rarest query lexemes, up to about this many rows
TRIGRAM_POOL = 4  # times `candidates`: symbols scored with word_similarity
EF_SEARCH = 100  # HNSW candidate list; raised to the LIMIT when more rows are asked for (pgvector caps it at 1000)
FILTERED_MAX_SCAN_TUPLES = 50_000  # how far an iterative scan may walk for a selective filter (default 20,000)

_VISIBLE = "f.repo_id = :r AND f.snapshot_id <= (SELECT current_snapshot_id FROM repositories WHERE id = :r)"


@dataclass(frozen=True)
class ChunkFilter:
    """Which chunks a search may return; empty fields do not filter.

    `paths` and `exclude_paths` are POSIX regular expressions (Postgres `~`) matched against the
    file's path: a chunk passes if its path matches any of `paths` and none of `exclude_paths`.
    """

    paths: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    @property
    def narrows(self) -> bool:
        """Whether it keeps only some chunks (an exclusion alone leaves most of a repository)."""
        return bool(self.paths or self.languages or self.kinds)

    def sql(self, params: dict) -> str:
        """` AND ...` conditions on chunks c and files f; binds its values into params."""
        conditions = []
        for name, value, condition in (
            ("fpaths", self.paths, "f.path ~ ANY(:fpaths)"),
            ("fxpaths", self.exclude_paths, "NOT (f.path ~ ANY(:fxpaths))"),
            ("flangs", self.languages, "f.language = ANY(:flangs)"),
            ("fkinds", self.kinds, "c.kind = ANY(:fkinds)"),
        ):
            if value:
                params[name] = list(value)
                conditions.append(condition)
        return "".join(f" AND {c}" for c in conditions)


@dataclass(frozen=True)
class ChunkSpan:
    """One stored chunk's place in its file, for joining the parts of a split definition."""

    chunk_id: int
    start_line: int
    end_line: int
    start_byte: int
    end_byte: int
    text: str


def _vector_cte(conn: Connection, version: IndexVersion, query_vector: np.ndarray, where: str, params: dict) -> str:
    """Nearest chunks by inner product through the version's partial HNSW index."""
    vid, dim = int(version.id), int(version.dim)  # literals, so the planner matches the partial index
    params["q"] = vector_literal(query_vector)
    ef_search = min(1000, max(EF_SEARCH, int(params["n"])))
    conn.execute(sa.text(f"SET LOCAL hnsw.ef_search = {ef_search}"))
    # The visibility filter and the search filters drop rows after the index yields them: an
    # iterative scan keeps walking the graph until LIMIT rows pass, instead of returning fewer.
    conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    if where:
        conn.execute(sa.text(f"SET LOCAL hnsw.max_scan_tuples = {FILTERED_MAX_SCAN_TUPLES}"))
    return f"""vec AS (
        SELECT id, row_number() OVER (ORDER BY d) AS r FROM (
            SELECT c.id, e.embedding::vector({dim}) <#> CAST(:q AS vector({dim})) AS d
            FROM embeddings e JOIN chunks c ON c.id = e.chunk_id JOIN files f ON f.id = c.file_id
            WHERE e.index_version_id = {vid} AND {_VISIBLE}{where}
            ORDER BY d LIMIT :n) s)"""


def _lexical_ctes(tsquery: str, where: str, narrowed: bool, params: dict) -> str:
    """Full-text ranking by ts_rank over the whole OR query, of candidates that hold one of its rarest lexemes.

    A lexeme in a third of all chunks ("test", "valu") would otherwise make ts_rank read and score tens
    of thousands of rows. Frequencies come from the planner's statistics of chunks.search; before the
    first ANALYZE every estimate is 0 and every lexeme is kept, which is the plain OR query.
    When a filter narrows the search, the rarest lexemes may occur only outside it, so the whole OR
    query selects the candidates: the filter, not the rarity, keeps the row count down.
    """
    params["tsq"] = tsquery
    params["rare_rows"] = RARE_ROWS
    gate = "q" if narrowed else "(SELECT q FROM lex_rare)"
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
            WHERE c.repo_id = :r AND c.search @@ {gate} AND {_VISIBLE}{where}
            ORDER BY rank DESC, c.id LIMIT :n) s)"""


def _trigram_cte(fragments: Sequence[str], candidates: int, where: str, params: dict) -> str:
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
                  WHERE c.repo_id = :r AND ({likes}) AND {_VISIBLE}{where}
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
    filters: ChunkFilter | None = None,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> list[Hit]:
    """Vector, full-text and trigram rankings of the visible chunks that pass `filters`, fused by reciprocal
    rank, each ranking's 1/(rrf_k + rank) times its weight (vector, lexical, trigram); a 0 weight skips it."""
    params: dict = {"r": repo, "n": candidates, "k": k, "rrf": rrf_k}
    params.update(wv=weights[0], wl=weights[1], wt=weights[2])
    use_vector = use_vector and weights[0] > 0
    use_lexical = use_lexical and weights[1] > 0
    use_trigram = use_trigram and weights[2] > 0
    filters = filters or ChunkFilter()
    where = filters.sql(params)
    ctes, sources = [], []
    if use_vector and version is not None and query_vector is not None:
        ctes.append(_vector_cte(conn, version, query_vector, where, params))
        sources.append("SELECT id, r, 'v' AS src FROM vec")
    if use_lexical and tsquery:
        ctes.append(_lexical_ctes(tsquery, where, filters.narrows, params))
        sources.append("SELECT id, r, 'l' AS src FROM lex")
    if use_trigram and fragments:
        ctes.append(_trigram_cte(fragments, candidates, where, params))
        sources.append("SELECT id, r, 't' AS src FROM tri")
    if not sources:
        return []
    sql = f"""
        WITH {", ".join(ctes)},
        ranked AS ({" UNION ALL ".join(sources)}),
        fused AS (
            SELECT id, sum(CASE src WHEN 'v' THEN :wv WHEN 'l' THEN :wl ELSE :wt END / (:rrf + r)) AS score,
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


def symbol_parts(conn: Connection, chunk_ids: Sequence[int], *, within_lines: int) -> dict[int, list[ChunkSpan]]:
    """For each chunk, the chunks of its file with the same symbol (itself included) within `within_lines`.

    A definition too long for one chunk is stored as several chunks of kind `fragment` that share
    its symbol; these are the parts `retrieve` joins back into one citation.
    """
    if not chunk_ids:
        return {}
    rows = conn.execute(
        sa.text(
            """SELECT h.id, c.id, c.start_line, c.end_line, c.start_byte, c.end_byte, c.text
               FROM chunks h JOIN chunks c ON c.file_id = h.file_id AND c.symbol = h.symbol
               WHERE h.id = ANY(:ids)
                 AND c.end_line >= h.start_line - :w AND c.start_line <= h.end_line + :w
               ORDER BY h.id, c.start_line, c.id"""
        ),
        {"ids": [int(i) for i in chunk_ids], "w": within_lines},
    ).all()
    parts: dict[int, list[ChunkSpan]] = {}
    for hit, *span in rows:
        parts.setdefault(hit, []).append(ChunkSpan(*span))
    return parts
