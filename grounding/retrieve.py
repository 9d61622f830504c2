"""Question -> ranked hits: vector and lexical search over one repository's visible chunks, fused by rank.

The text side is pure and lives here: identifiers are split on snake_case and camelCase so that a
question's words meet the code's names, for both the stored tsvector and the query.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import PurePosixPath

from grounding import db, store
from grounding.config import get_settings
from grounding.embed import load_embedder
from grounding.records import Chunk, Hit

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
MAX_TERMS_CHARS = 200_000  # a tsvector is limited to 1 MB; a chunk's terms stay far below it
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
    """Every identifier as written (lower-cased) and its parts, space-separated, for to_tsvector."""
    out: list[str] = []
    for word in _IDENT.findall(text[:MAX_TERMS_CHARS]):
        lower = word.lower().strip("_")
        parts = split_identifier(word)
        if lower and (len(parts) != 1 or parts[0] != lower):
            out.append(lower.replace("_", ""))
        out.extend(parts)
    return " ".join(out)


def lexical_terms(chunk: Chunk) -> tuple[str, str, str]:
    """(symbol, path, body) terms of a chunk: weighted A, B and D in its tsvector."""
    # Without the extension: "py" in every chunk's terms would make "SymPy" match everything.
    path_terms = identifier_terms(str(PurePosixPath(chunk.path).with_suffix("")).replace("/", " "))
    return identifier_terms(chunk.symbol or ""), path_terms, identifier_terms(chunk.text)


def query_terms(question: str) -> list[str]:
    """The question's distinct search terms: identifiers split, stop words dropped, order kept."""
    seen: dict[str, None] = {}
    for term in identifier_terms(question).split():
        if len(term) > 1 and term not in STOPWORDS and not term.isdigit():
            seen.setdefault(term, None)
    return list(seen)[:MAX_QUERY_TERMS]


def to_tsquery_text(terms: list[str]) -> str:
    """An OR query over the terms for to_tsquery('english', ...): any term may match, rank sorts it out."""
    return " | ".join(terms)


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


def search(
    repo: str,
    question: str,
    *,
    k: int = 8,
    mode: str = "hybrid",
    index_version: int | None = None,
) -> list[Hit]:
    """The k best chunks of `repo` for `question`; mode is hybrid, vector or lexical.

    Vectors come from the active index version, or from `index_version` (a candidate the promotion
    gate measures); questions are encoded by that version's query encoder.
    """
    if mode not in ("hybrid", "vector", "lexical"):
        raise ValueError(f"mode must be hybrid, vector or lexical, not {mode!r}")
    settings = get_settings()
    engine = db.get_engine()
    with engine.begin() as conn:
        repo_id = store.repo_id(conn, repo)
        if index_version is None:
            version = store.active_index_version(conn, repo_id)
        else:
            version = store.index_version(conn, index_version)
            if version is None or version.repo_id != repo_id:
                raise ValueError(f"index version {index_version} does not belong to repository {repo!r}")
        _, commit = store.current_snapshot(conn, repo_id)
    query_vector = None
    if mode != "lexical" and version is not None:
        query_vector = load_embedder(version.question_encoder).embed_batch([question])[0]
    terms = query_terms(question)
    with engine.begin() as conn:
        hits = store.hybrid_search(
            conn,
            repo_id,
            version,
            query_vector=query_vector,
            tsquery=to_tsquery_text(terms),
            fragments=identifier_fragments(question),
            candidates=max(settings.candidates, k),
            rrf_k=settings.rrf_k,
            k=k,
            use_vector=mode in ("hybrid", "vector"),
            use_lexical=mode in ("hybrid", "lexical"),
            use_trigram=mode in ("hybrid", "lexical"),
        )
    used = version.id if version is not None and mode != "lexical" else None
    return [
        dataclasses.replace(h, citation=dataclasses.replace(h.citation, repo=repo, commit=commit), index_version=used)
        for h in hits
    ]
