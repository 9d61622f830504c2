"""Hybrid search in one SQL statement: HNSW, BM25 and trigram rankings fused by weighted reciprocal rank.

Each ranking is a CTE over the repository's visible chunks, cut to `candidates` rows; `fused` sums
1 / (rrf_k + rank) per chunk. The costs were measured with bench/query.py over 100k chunks.
Filters (path regexes, languages, kinds) sit inside every ranking, so a selective filter still
leaves `candidates` rows to fuse rather than cutting the fused list afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grounding.errors import SearchTimeout
from grounding.lexical import K1, B
from grounding.records import Citation, Hit, IndexVersion
from grounding.store.writes import VECTOR_TYPE, vector_literal

__all__ = ["hybrid_search", "bm25_search", "symbol_parts", "visible_chunk", "file_lines", "ChunkSpan", "ChunkFilter"]

POSTING_BUDGET = 100_000  # postings one BM25 ranking reads at most (the rarest term is always read whole)
TRIGRAM_POOL = 4  # times `candidates`: symbols scored with word_similarity
EF_SEARCH = 100  # HNSW candidate list; raised to the LIMIT when more rows are asked for (pgvector caps it at 1000)
# ... and with the index's size: EF_SEARCH per EF_ROWS vectors. Measured by bench/vectors.py at 1M chunks
# (recall@10 against exact search): 100 gives .925, 200 .943, 400 .961 (p50 18 ms, p99 32 ms).
EF_ROWS = 250_000
EF_CACHE_S = 300.0  # how long a version's index size is trusted before it is read again
_ef_cache: dict[tuple[str, int], tuple[int, float]] = {}
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
    roles: tuple[str, ...] = ()

    @property
    def narrows(self) -> bool:
        """Whether it keeps only some chunks (an exclusion alone leaves most of a repository)."""
        return bool(self.paths or self.languages or self.kinds or self.roles)

    def sql(self, params: dict) -> str:
        """` AND ...` conditions on chunks c and files f; binds its values into params."""
        conditions = []
        for name, value, condition in (
            ("fpaths", self.paths, "f.path ~ ANY(:fpaths)"),
            ("fxpaths", self.exclude_paths, "NOT (f.path ~ ANY(:fxpaths))"),
            ("flangs", self.languages, "f.language = ANY(:flangs)"),
            ("fkinds", self.kinds, "c.kind = ANY(:fkinds)"),
            ("froles", self.roles, "f.role = ANY(:froles)"),
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
    ef_search = min(1000, max(ef_search_for(conn, vid), int(params["n"])))
    conn.execute(sa.text(f"SET LOCAL hnsw.ef_search = {ef_search}"))
    # The visibility filter and the search filters drop rows after the index yields them: an
    # iterative scan keeps walking the graph until LIMIT rows pass, instead of returning fewer.
    conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    if where:
        conn.execute(sa.text(f"SET LOCAL hnsw.max_scan_tuples = {FILTERED_MAX_SCAN_TUPLES}"))
    return f"""vec AS (
        SELECT id, row_number() OVER (ORDER BY d) AS r FROM (
            SELECT c.id, e.embedding::{VECTOR_TYPE}({dim}) <#> CAST(:q AS {VECTOR_TYPE}({dim})) AS d
            FROM embeddings e JOIN chunks c ON c.id = e.chunk_id JOIN files f ON f.id = c.file_id
            WHERE e.index_version_id = {vid} AND {_VISIBLE}{where}
            ORDER BY d LIMIT :n) s)"""


def ef_search_for(conn: Connection, version_id: int) -> int:
    """EF_SEARCH, times the version's HNSW index size in EF_ROWS (at least 1): a larger graph needs a longer
    candidate list for the same recall. The size (the index's row estimate) is cached for EF_CACHE_S."""
    now = time.monotonic()
    key = (str(conn.engine.url), int(version_id))  # version ids repeat across databases
    cached = _ef_cache.get(key)
    if cached is not None and cached[1] > now:
        return cached[0]
    rows = conn.execute(
        sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:i)"),
        {"i": f"embeddings_hnsw_v{int(version_id)}"},
    ).scalar()
    ef = min(1000, round(EF_SEARCH * max(1.0, float(rows or 0) / EF_ROWS)))
    if len(_ef_cache) > 10_000:  # versions come and go: forget the expired ones
        for stale in [k for k, (_, until) in _ef_cache.items() if until <= now]:
            del _ef_cache[stale]
    _ef_cache[key] = (ef, now + EF_CACHE_S)
    return ef


def _bm25_ctes(terms: Sequence[str], where: str, params: dict) -> str:
    """BM25 (grounding.lexical) of the visible chunks holding any question token, from postings and kept statistics.

    Without filters the postings alone answer (their covering index holds tf, the chunk's length and
    its file's snapshot); filters join the chunk and its file. The question's terms are read rarest
    first until POSTING_BUDGET postings: a term common enough to pass the budget has the lowest idf
    and adds least, and a question of common words would otherwise read most of the table.
    """
    params["bterms"] = list(terms)
    params["k1"], params["b"] = K1, B
    params["budget"] = POSTING_BUDGET
    join = " JOIN chunks c ON c.id = p.chunk_id JOIN files f ON f.id = c.file_id" if where else ""
    return f"""bm25_q AS (
        SELECT t.term, count(*) AS qtf FROM unnest(CAST(:bterms AS text[])) AS t(term) GROUP BY t.term),
    bm25_corpus AS (
        SELECT current_snapshot_id AS s, greatest(bm25_docs, 1)::float8 AS n,
               greatest(bm25_length::float8 / greatest(bm25_docs, 1), 1) AS avgdl
        FROM repositories WHERE id = :r),
    bm25_df AS (
        SELECT q.term, q.qtf, t.df, sum(t.df) OVER w AS cum, row_number() OVER w AS i
        FROM bm25_q q JOIN bm25_terms t ON t.repo_id = :r AND t.term = q.term WINDOW w AS (ORDER BY t.df, q.term)),
    bm25_idf AS (
        SELECT d.term, d.qtf * ln(1 + (bc.n - d.df + 0.5) / (d.df + 0.5)) AS w
        FROM bm25_df d, bm25_corpus bc WHERE d.i = 1 OR d.cum <= :budget),
    lex AS (
        SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS r FROM (
            SELECT p.chunk_id AS id,
                   sum(i.w * p.tf / (p.tf + :k1 * (1 - :b + :b * p.dl / bc.avgdl))) AS score
            FROM bm25_idf i JOIN bm25_postings p ON p.repo_id = :r AND p.term = i.term{join}, bm25_corpus bc
            WHERE p.snapshot_id <= bc.s{where}
            GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT :n) s)"""


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
    terms: Sequence[str],
    fragments: Sequence[str],
    candidates: int,
    rrf_k: int,
    k: int,
    use_vector: bool = True,
    use_lexical: bool = True,
    use_trigram: bool = True,
    filters: ChunkFilter | None = None,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    favoured_roles: Sequence[str] = ("source",),
    role_prior: float = 1.0,
    timeout_s: float | None = None,
) -> list[Hit]:
    """Vector, BM25 and trigram rankings of the visible chunks that pass `filters`, fused by reciprocal rank.

    Each ranking adds its weight (vector, lexical, trigram) / (rrf_k + rank) to a chunk's score; a 0
    weight skips it. A chunk whose file's role is not among `favoured_roles` has its fused score
    multiplied by `role_prior` (1 leaves the roles alone). Postgres stops the statement after `timeout_s`
    (SearchTimeout): the transaction is the caller's, so the timeout is set for it alone."""
    _statement_timeout(conn, timeout_s)
    params: dict = {"r": repo, "n": candidates, "k": k, "rrf": rrf_k}
    params.update(wv=weights[0], wl=weights[1], wt=weights[2])
    params.update(favoured=list(favoured_roles), prior=float(role_prior))
    use_vector = use_vector and weights[0] > 0
    use_lexical = use_lexical and weights[1] > 0
    use_trigram = use_trigram and weights[2] > 0
    filters = filters or ChunkFilter()
    where = filters.sql(params)
    ctes, sources = [], []
    if use_vector and version is not None and query_vector is not None:
        ctes.append(_vector_cte(conn, version, query_vector, where, params))
        sources.append("SELECT id, r, 'v' AS src FROM vec")
    if use_lexical and terms:
        ctes.append(_bm25_ctes(terms, where, params))
        sources.append("SELECT id, r, 'l' AS src FROM lex")
    if use_trigram and fragments:
        ctes.append(_trigram_cte(fragments, candidates, where, params))
        sources.append("SELECT id, r, 't' AS src FROM tri")
    if not sources:
        return []
    sql = f"""
        WITH {", ".join(ctes)},
        ranked AS ({" UNION ALL ".join(sources)}),
        rrf AS (
            SELECT id, sum(CASE src WHEN 'v' THEN :wv WHEN 'l' THEN :wl ELSE :wt END / (:rrf + r)) AS score,
                   min(r) FILTER (WHERE src = 'v') AS vr, min(r) FILTER (WHERE src = 'l') AS lr,
                   min(r) FILTER (WHERE src = 't') AS tr
            FROM ranked GROUP BY id),
        fused AS (
            SELECT rrf.id, rrf.vr, rrf.lr, rrf.tr,
                   rrf.score * CASE WHEN f.role = ANY(:favoured) THEN 1 ELSE :prior END AS score
            FROM rrf JOIN chunks c ON c.id = rrf.id JOIN files f ON f.id = c.file_id
            ORDER BY score DESC, rrf.id LIMIT :k)
        SELECT c.id, f.path, c.start_line, c.end_line, c.text, c.symbol, c.kind, f.language, f.role,
               fused.score, fused.vr, fused.lr, fused.tr
        FROM fused JOIN chunks c ON c.id = fused.id JOIN files f ON f.id = c.file_id
        ORDER BY fused.score DESC, c.id
    """
    rows = _timed(conn, sql, params, timeout_s)
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
                role=role,
            ),
            score=float(score),
            vector_rank=vr,
            lexical_rank=lr,
            trigram_rank=tr,
        )
        for cid, path, sl, el, text, symbol, kind, language, role, score, vr, lr, tr in rows
    ]


def bm25_search(
    conn: Connection, repo: int, terms: Sequence[str], *, k: int, filters: ChunkFilter | None = None
) -> list[tuple[int, float]]:
    """(chunk id, BM25 score) of the k best visible chunks for tokenised `terms`: the lexical ranking alone."""
    params: dict = {"r": repo, "n": k}
    sql = (
        f"WITH {_bm25_ctes(terms, (filters or ChunkFilter()).sql(params), params)} SELECT id, score FROM lex ORDER BY r"
    )
    return [(cid, float(score)) for cid, score in conn.execute(sa.text(sql), params)]


def _statement_timeout(conn: Connection, timeout_s: float | None) -> None:
    if timeout_s is not None:  # for this transaction only (is_local): a pooled connection keeps no setting
        ms = max(1, round(timeout_s * 1000))
        conn.execute(sa.text("SELECT set_config('statement_timeout', :t, true)"), {"t": f"{ms}ms"})


def _timed(conn: Connection, sql: str, params: dict, timeout_s: float | None) -> list:
    """The rows of `sql`; a statement Postgres cancelled at the timeout is a SearchTimeout, not a driver error."""
    try:
        return conn.execute(sa.text(sql), params).all()
    except sa.exc.OperationalError as err:
        if getattr(err.orig, "sqlstate", None) != "57014":  # query_canceled
            raise
        raise SearchTimeout(
            f"the search ran past {timeout_s:g} s in the database and was stopped (GROUNDING_SEARCH_TIMEOUT_S); "
            "narrow or simplify its path filters, or ask again when the server is less busy"
        ) from None


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


def visible_chunk(conn: Connection, chunk_id: int) -> dict | None:
    """One chunk that its repository's current snapshot shows (repo, path, lines, text, commit...); else None."""
    row = conn.execute(
        sa.text(
            """
            SELECT r.name AS repo, f.path, c.start_line, c.end_line, c.text, c.symbol, c.kind, f.language, f.role,
                   s.commit
            FROM chunks c JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = c.repo_id
            LEFT JOIN snapshots s ON s.id = r.current_snapshot_id
            WHERE c.id = :c AND f.snapshot_id <= r.current_snapshot_id
            """
        ),
        {"c": chunk_id},
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def file_lines(conn: Connection, repo: str, path: str, *, first: int, last: int) -> tuple[str | None, list[ChunkSpan]]:
    """(current commit, chunks of `path` whose lines meet [first, last]) in the file `repo` shows now.

    The chunks are the stored text (secrets already redacted); lines outside every chunk are not stored.
    """
    row = conn.execute(
        sa.text(
            "SELECT r.id, s.commit FROM repositories r LEFT JOIN snapshots s ON s.id = r.current_snapshot_id "
            "WHERE r.name = :n"
        ),
        {"n": repo},
    ).one_or_none()
    if row is None:
        return None, []
    rows = conn.execute(
        sa.text(
            f"""SELECT c.id, c.start_line, c.end_line, c.start_byte, c.end_byte, c.text
                FROM chunks c JOIN files f ON f.id = c.file_id
                WHERE {_VISIBLE} AND f.path = :p AND c.end_line >= :first AND c.start_line <= :last
                ORDER BY c.start_line, c.start_byte"""
        ),
        {"r": row.id, "p": path, "first": first, "last": last},
    ).all()
    return row.commit, [ChunkSpan(*r) for r in rows]
