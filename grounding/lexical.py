"""BM25's side of the text: the tokens a chunk and a question are reduced to, and the score (pure).

Tokens follow scikit-learn's CountVectorizer, as bm25s does: lower-cased runs of two or more word
characters, minus bm25s's 33 English stop words. Code adds one thing: an identifier that splits on
snake_case or camelCase also yields its parts (`getNodeAttributes` -> `getnodeattributes`, `get`,
`node`, `attributes`), so a question's words meet the code's names. A chunk's tokens are those of its
path (without the extension) and its text.

The score is BM25 with Lucene's idf, as bm25s computes it (method "lucene"):
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
    score(q, d) = sum over the question's tokens t (repeats counted) of
                  idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))
Postgres computes the same sum from `bm25_postings` and the statistics ingest keeps (store/search.py);
`score` here is the reference the tests check that SQL against.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath

K1 = 1.5
B = 0.75
MAX_TEXT_CHARS = 200_000  # a chunk longer than this is tokenised on its head
MAX_QUESTION_TOKENS = 32
MAX_TOKEN_CHARS = 64  # longer runs (hashes, base64, long CJK text) are not words; a btree key holds 2704 bytes
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)  # bm25s.stopwords.STOPWORDS_EN
_WORD = re.compile(r"(?u)\b\w\w+\b")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def words(text: str) -> list[str]:
    """bm25s's tokens: lower-cased `\\w\\w+` runs without its stop words."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def identifier_words(name: str) -> list[str]:
    """`_parseHTTPHeader_v2` -> ["parse", "http", "header", "v", "2"]: a name as the words a question would use."""
    return [p.lower() for p in _PART.findall(name)]


def tokens(text: str) -> list[str]:
    """bm25s's tokens, each followed by its identifier parts when it splits into more than one.

    A run longer than MAX_TOKEN_CHARS is dropped."""
    out: list[str] = []
    for raw in _WORD.findall(text[:MAX_TEXT_CHARS]):
        if len(raw) > MAX_TOKEN_CHARS:
            continue
        lower = raw.lower()
        if lower not in STOPWORDS:
            out.append(lower)
        parts = _PART.findall(raw)
        if len(parts) > 1:
            out.extend(p for p in (q.lower() for q in parts) if len(p) > 1 and p not in STOPWORDS)
    return out


def chunk_tokens(path: str, text: str) -> list[str]:
    """The tokens BM25 indexes for a chunk: its path's words (no extension), then its text's."""
    return tokens(str(PurePosixPath(path).with_suffix("")).replace("/", " ")) + tokens(text)


def question_tokens(question: str) -> list[str]:
    """The tokens BM25 scores a question by, repeats kept (bm25s counts a repeated token twice)."""
    return tokens(question)[:MAX_QUESTION_TOKENS]


def idf(df: int, n: int) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def score(question: Sequence[str], document: Sequence[str], df: dict[str, int], n: int, avgdl: float) -> float:
    """BM25 of one tokenised document for a tokenised question, given the corpus's statistics."""
    tf = Counter(document)
    norm = K1 * (1 - B + B * len(document) / avgdl)
    return sum(idf(df[t], n) * tf[t] / (tf[t] + norm) for t in question if tf.get(t))
