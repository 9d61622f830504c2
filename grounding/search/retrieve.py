"""Question -> ranked hits: vector, BM25 and trigram search over one repository's visible chunks, fused by rank.

BM25's tokens are grounding.lexical's; the question's identifier fragments (for the trigram ranking)
and what sharpens the fused list are here: filters (grounding/search/filters.py), the role prior that puts
implementation first unless the question asks for tests, docs or examples (grounding/roles.py),
joining the parts of a split definition back into one citation, and merging citations that overlap.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from grounding import db, store, validation
from grounding.config import get_settings
from grounding.errors import EncoderNotFound, InvalidArgument, NotIndexed
from grounding.index.embed import load_embedder
from grounding.lexical import question_tokens
from grounding.records import Hit, IndexVersion
from grounding.roles import IMPLEMENTATION, asked_roles
from grounding.search.filters import (
    LANGUAGE_ALIASES,
    SearchFilters,
    chunk_filter,
    glob_to_regex,
    parse_query,
    with_inline_filters,
)
from grounding.search.fusion import DEFAULT_WEIGHTS, FusionWeights

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
MAX_TERMS_CHARS = 200_000
MAX_QUERY_TERMS = 32
MAX_FRAGMENTS = 6
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i if in is it its me my of on or should the "
    "this that to was what when where which who why will with you your there their them then than "
    "get set use used using code function method class file return returns".split()
)


def split_identifier(word: str) -> list[str]:
    """`parseHTTPHeader_v2` -> ["parse", "http", "header", "v", "2"]."""
    return [p.lower() for p in _PART.findall(word)]


def identifier_terms(text: str) -> str:
    """Every identifier as written (lower-cased) and its parts, space-separated."""
    out: list[str] = []
    for word in _IDENT.findall(text[:MAX_TERMS_CHARS]):
        lower = word.lower().strip("_")
        parts = split_identifier(word)
        if lower and (len(parts) != 1 or parts[0] != lower):
            out.append(lower.replace("_", ""))
        out.extend(parts)
    return " ".join(out)


def query_terms(question: str) -> list[str]:
    """The question's distinct search terms: identifiers split, stop words dropped, order kept."""
    seen: dict[str, None] = {}
    for term in identifier_terms(question).split():
        if len(term) > 1 and term not in STOPWORDS and not term.isdigit():
            seen.setdefault(term, None)
    return list(seen)[:MAX_QUERY_TERMS]


_CODE_WORD = re.compile(r"`+([^`\s]+)`+|([A-Za-z_][\w.]*[A-Za-z0-9])")  # `name`, ``name`` (RST), or a word


def looks_like_identifier(word: str) -> bool:
    """snake_case, camelCase, CamelCase or dotted: a name from code, not an English word."""
    return "_" in word.strip("_") or "." in word or bool(re.search(r"[a-z][A-Z]|[A-Z][a-z]+[A-Z]", word))


def identifier_fragments(question: str) -> list[str]:
    """The question's identifier-like words (and anything in backticks), to find inside symbol names.

    Plain English words are left to full-text search: as trigram fragments they match most symbols
    and drown the ranking (measured by bench/retrieval.py).
    """
    frags: dict[str, None] = {}
    for quoted, word in _CODE_WORD.findall(question):
        for part in [quoted] if quoted else [word] if looks_like_identifier(word) else []:
            for piece in part.split("."):
                if len(piece) >= 3:
                    frags.setdefault(piece.lower(), None)
    return list(frags)[:MAX_FRAGMENTS]


__all__ = [
    "LANGUAGE_ALIASES",
    "SearchFilters",
    "chunk_filter",
    "glob_to_regex",
    "parse_query",
    "search",
    "merge_hits",
    "expand_hits",
]


EXPAND_MAX_LINES = 200  # a split definition is joined back up to this many lines around the hit
EXPAND_MAX_CHARS = 16_000
MERGE_FETCH = 3  # times k: fused hits fetched when merging, so k distinct citations remain
MAX_FETCH = 12  # times k: the most a search widens to when merging still leaves fewer than k


def _join_lines(pieces: Sequence[tuple[int, int, str]]) -> tuple[int, int, str]:
    """(start, end, text) pieces of one file, sorted by start, as one span: shared lines once, gaps as blank lines."""
    start, end, text = pieces[0]
    lines = text.split("\n")
    for s, e, t in pieces[1:]:
        if s > end + 1:
            lines.extend([""] * (s - end - 1))  # the caller proved these lines empty
        if e > end:
            lines.extend(t.split("\n")[max(0, end + 1 - s) :])
            end = e
    return start, end, "\n".join(lines)


def merge_hits(hits: Sequence[Hit]) -> list[Hit]:
    """Hits of one file whose lines overlap or touch, merged into one hit spanning their union.

    The merged hit takes the place, chunk id and symbol of its best-ranked part, the best score, and
    each rank's best; its text holds every line once. The order is that of the best-ranked parts.
    """
    by_file: dict[tuple, list[int]] = {}
    for i, h in enumerate(hits):
        c = h.citation
        by_file.setdefault((c.repo, c.commit, c.path), []).append(i)
    merged: list[tuple[int, Hit]] = []
    for members in by_file.values():
        members.sort(key=lambda i: (hits[i].citation.start_line, hits[i].citation.end_line))
        group: list[int] = []
        group_end = 0
        for i in members:
            c = hits[i].citation
            if group and c.start_line > group_end + 1:
                merged.append(_merged(hits, group))
                group = []
            group_end = max(group_end, c.end_line) if group else c.end_line
            group.append(i)
        merged.append(_merged(hits, group))
    return [h for _, h in sorted(merged, key=lambda m: m[0])]


def _merged(hits: Sequence[Hit], group: list[int]) -> tuple[int, Hit]:
    """(position of the best part, the merged hit) of a group of touching hits sorted by start line."""
    best = min(group)
    if len(group) == 1:
        return best, hits[best]
    parts = [hits[i] for i in group]
    start, end, text = _join_lines([(h.citation.start_line, h.citation.end_line, h.citation.snippet) for h in parts])
    score = max(h.score for h in parts)

    def best_rank(name: str) -> int | None:
        ranks = [getattr(h, name) for h in parts if getattr(h, name) is not None]
        return min(ranks) if ranks else None

    top = hits[best]
    citation = dataclasses.replace(
        top.citation, start_line=start, end_line=end, snippet=text, score=max(h.citation.score for h in parts)
    )
    return best, dataclasses.replace(
        top,
        citation=citation,
        score=score,
        vector_rank=best_rank("vector_rank"),
        lexical_rank=best_rank("lexical_rank"),
        trigram_rank=best_rank("trigram_rank"),
    )


def join_parts(
    chunk_id: int,
    parts: Sequence[store.ChunkSpan],
    *,
    max_lines: int = EXPAND_MAX_LINES,
    max_chars: int = EXPAND_MAX_CHARS,
) -> tuple[int, int, str] | None:
    """The contiguous parts of a split definition around chunk `chunk_id`, joined: (start, end, text).

    Parts are contiguous when their lines touch, or when the bytes between them are only line
    breaks (blank lines no chunk holds); another definition between two parts ends the run. The
    run grows from the hit one part at a time, before and after in turn, while it stays within the
    budget, so the lines nearest the hit are kept. None if `chunk_id` is not among the parts.
    """
    parts = sorted(parts, key=lambda p: (p.start_line, p.chunk_id))
    at = next((i for i, p in enumerate(parts) if p.chunk_id == chunk_id), None)
    if at is None:
        return None

    def contiguous(a: store.ChunkSpan, b: store.ChunkSpan) -> bool:
        return b.start_line <= a.end_line + 1 or b.start_byte - a.end_byte == b.start_line - a.end_line

    def fits(lo: int, hi: int) -> bool:
        lines = max(p.end_line for p in parts[lo : hi + 1]) - parts[lo].start_line + 1
        return lines <= max_lines and sum(len(p.text) for p in parts[lo : hi + 1]) <= max_chars

    lo = hi = at
    grown = True
    while grown:
        grown = False
        if lo > 0 and contiguous(parts[lo - 1], parts[lo]) and fits(lo - 1, hi):
            lo, grown = lo - 1, True
        if hi + 1 < len(parts) and contiguous(parts[hi], parts[hi + 1]) and fits(lo, hi + 1):
            hi, grown = hi + 1, True
    return _join_lines([(p.start_line, p.end_line, p.text) for p in parts[lo : hi + 1]])


def expand_hits(hits: Sequence[Hit], parts: dict[int, list[store.ChunkSpan]]) -> list[Hit]:
    """Each fragment hit widened to the joined parts of its definition (`parts` by chunk id); others as they are."""
    out = []
    for h in hits:
        span = join_parts(h.chunk_id, parts.get(h.chunk_id, ()))
        if span is not None and span[:2] != (h.citation.start_line, h.citation.end_line):
            start, end, text = span
            h = dataclasses.replace(
                h, citation=dataclasses.replace(h.citation, start_line=start, end_line=end, snippet=text)
            )
        out.append(h)
    return out


def expands(hit: Hit) -> bool:
    """Whether a hit is one part of a definition split across chunks: the parts share its symbol."""
    return hit.citation.kind == "fragment" and bool(hit.citation.symbol)


# --- search ------------------------------------------------------------------------------------


def hybrid_weights(setting: str, version: IndexVersion | None = None) -> FusionWeights:
    """The weights hybrid search fuses by: GROUNDING_FUSION_WEIGHTS, or with `auto` the ones chosen for the index
    version (grounding.evaluation.tuning), else DEFAULT_WEIGHTS. A malformed value is an InvalidArgument naming the
    variable."""
    if setting.strip().lower() == "auto":
        try:
            return FusionWeights.parse(
                version.fusion_weights if version and version.fusion_weights else DEFAULT_WEIGHTS
            )
        except ValueError:  # a stored choice this release cannot read: the defaults, not a failed search
            return FusionWeights.parse(DEFAULT_WEIGHTS)
    try:
        return FusionWeights.parse(setting)
    except ValueError as err:
        raise InvalidArgument(f"GROUNDING_FUSION_WEIGHTS: {err}") from None


def configured_reranker(conn, repo: str, setting: str) -> str | None:
    """The cross-encoder GROUNDING_RERANKER gives `repo`: a path, none (`off`), or its promoted one (`promoted`).

    A derived eval index is reranked by its parent's promoted model (the catalogue says which).
    """
    if setting.lower() in ("off", "none", "no", "false", "0"):
        return None
    if setting != "promoted":
        return setting
    return store.promoted_checkpoint(conn, store.derived_parent(conn, repo) or repo, kind="reranker")


def search(
    repo: str,
    question: str,
    *,
    k: int = 8,
    mode: str = "hybrid",
    index_version: int | None = None,
    filters: SearchFilters | None = None,
    rerank: bool | str | None = None,
    merge: bool = True,
    expand: bool = True,
    user: str | None = None,
) -> list[Hit]:
    """The k best chunks of `repo` for `question`; mode is hybrid, vector or lexical.

    With `user`, the repository must be granted to them (grounding.access); None is a trusted caller.

    Vectors come from the active index version, or from `index_version` (a candidate the promotion
    gate measures); questions are encoded by that version's query encoder. `filters` apply inside
    every ranking. The fused hits are then reordered by a cross-encoder (rerank: None or True follows
    GROUNDING_RERANKER, True failing when it names none; False: none; a path: that one), widened
    from a fragment to its definition (expand), and merged where they overlap or touch (merge),
    fetching more than k so that k distinct citations remain. Filters written inline in the question
    (`path:src/** lang:python ...`) are parsed off it and added to `filters`.
    """
    repo = validation.repo_name(repo, derived_ok=True)
    question = validation.question(question)
    k = validation.count(k, "k")
    if mode not in ("hybrid", "vector", "lexical"):
        raise InvalidArgument(f"mode must be hybrid, vector or lexical, not {mode!r}")
    if index_version is not None:
        index_version = validation.count(index_version, "index_version", maximum=2**31 - 1)
    from grounding.access import authorize

    authorize(user, [repo])  # before anything, even whether the repository exists, is revealed
    if validation.user(user) is not None and isinstance(rerank, str):
        raise InvalidArgument("a reranker path is for trusted callers; a user gets the repository's own reranker")
    question, filters = with_inline_filters(question, filters)
    settings = get_settings()
    if not 0 < settings.role_prior <= 1:  # NaN fails this too
        raise InvalidArgument(f"GROUNDING_ROLE_PRIOR must be above 0 and at most 1, not {settings.role_prior}")
    if not 0 < settings.search_timeout_s < float("inf"):  # NaN fails this too
        raise InvalidArgument(f"GROUNDING_SEARCH_TIMEOUT_S must be a positive number, not {settings.search_timeout_s}")
    if settings.rerank_candidates < 1:
        raise InvalidArgument(f"GROUNDING_RERANK_CANDIDATES must be at least 1, not {settings.rerank_candidates}")
    engine = db.get_engine()
    with engine.begin() as conn:
        repo_id = store.repo_id(conn, repo)
        if index_version is None:
            version = store.active_index_version(conn, repo_id)
        else:
            version = store.index_version(conn, index_version)
            if version is None or version.repo_id != repo_id:
                raise InvalidArgument(f"index version {index_version} does not belong to repository {repo!r}")
        derived = validation.DERIVED_NAME.fullmatch(repo) is not None  # only eval indexes hold `~`
        if (
            derived
            and version is not None
            and version.fusion_weights is None
            and (parent := store.derived_parent(conn, repo))
        ):
            # An eval index is searched as its parent is: by the weights chosen for the parent's version.
            chosen = store.active_index_version(conn, store.repo_id(conn, parent))
            if chosen is not None and chosen.fusion_weights:
                version = dataclasses.replace(version, fusion_weights=chosen.fusion_weights)
        snapshot, commit = store.current_snapshot(conn, repo_id)
        if snapshot is None:
            last = store.latest_snapshot(conn, repo)
            why = ""
            if last and last["error"]:  # its text may name server paths: a trusted caller's, as in the API
                why = ": its last ingest failed" + (f" ({last['error'].splitlines()[0][:200]})" if user is None else "")
            raise NotIndexed(
                f"repository {repo!r} has no index yet{why}; fix that and run `grounding ingest` again "
                "(`grounding repos` shows every run)"
            )
        reranker_path = rerank if isinstance(rerank, str) else None
        if rerank is not False and reranker_path is None:
            reranker_path = configured_reranker(conn, repo, settings.reranker)
    reranker = None
    if reranker_path is not None:
        from grounding.search.rerank import load_reranker

        reranker = load_reranker(reranker_path)
    elif rerank is True:
        raise EncoderNotFound(
            f"reranking {repo!r} needs a cross-encoder: train one with `grounding train-reranker {repo}`, "
            "or set GROUNDING_RERANKER to a local cross-encoder directory"
        )
    query_vector = None
    if mode != "lexical" and version is not None:
        query_vector = load_embedder(version.question_encoder).embed_batch([question])[0]
    terms = question_tokens(question)
    where = chunk_filter(filters)
    favoured = where.roles or (IMPLEMENTATION, *sorted(asked_roles(question)))
    weights = (1.0, 1.0, 1.0)  # one ranker alone (vector or lexical mode) is not reweighted
    if mode == "hybrid":
        w = hybrid_weights(settings.fusion_weights, version)
        weights = (w.vector, w.lexical, w.trigram)
    used = version.id if version is not None and mode != "lexical" else None
    fetch = k * MERGE_FETCH if merge else k
    if reranker is not None:
        fetch = max(fetch, settings.rerank_candidates)
    scored: dict[int, float] = {}  # reranker scores by chunk id, kept when the search widens
    while True:
        with engine.begin() as conn:
            fused = store.hybrid_search(
                conn,
                repo_id,
                version,
                query_vector=query_vector,
                terms=terms,
                fragments=identifier_fragments(question),
                candidates=max(settings.candidates, fetch),
                rrf_k=settings.rrf_k,
                k=fetch,
                use_vector=mode in ("hybrid", "vector"),
                use_lexical=mode in ("hybrid", "lexical"),
                use_trigram=mode in ("hybrid", "lexical"),
                filters=where,
                weights=weights,
                favoured_roles=favoured,
                role_prior=settings.role_prior,
                timeout_s=settings.search_timeout_s,
            )
        hits = [
            dataclasses.replace(
                h, citation=dataclasses.replace(h.citation, repo=repo, commit=commit), index_version=used
            )
            for h in fused
        ]
        if reranker is not None:
            from grounding.search.rerank import rerank_head

            hits = rerank_head(reranker, question, hits, settings.rerank_candidates, known=scored)
        if expand and (fragments := [h.chunk_id for h in hits if expands(h)]):
            with engine.connect() as conn:
                parts = store.symbol_parts(conn, fragments, within_lines=EXPAND_MAX_LINES)
            hits = expand_hits(hits, parts)
        if merge:
            hits = merge_hits(hits)
        if len(hits) >= k or len(fused) < fetch or fetch >= k * MAX_FETCH:
            return hits[:k]
        fetch = min(fetch * 2, k * MAX_FETCH)  # merging left fewer than k: widen the candidates
