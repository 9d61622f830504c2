"""BM25 over LM token ids (and their bigrams): RETRO's lexical neighbours (pure: numpy and scipy.sparse).

A RETRO neighbour helps where it holds text the continuation repeats (Norlund et al., 2023); BM25
neighbours beat dense ones for RETRO (Doostmohammadi et al., 2023). Terms are the chunk's token ids,
and with `bigrams` its adjacent token pairs too (hashed), which favours chunks sharing runs of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

BIGRAM_BUCKETS = 1 << 20  # hashed adjacent-pair terms, after the unigram ids


def term_matrix(
    rows: Sequence[Sequence[int]], *, vocab_size: int, bigrams: bool, ignore: Sequence[int] = ()
) -> sparse.csr_matrix:
    """(len(rows), terms) term counts: token ids, then hashed bigrams of adjacent tokens when asked."""
    skip = set(ignore)
    indptr, indices = [0], []
    for row in rows:
        ids = [t for t in row if t not in skip and 0 <= t < vocab_size]  # an id the documents never had: no term
        terms = list(ids)
        if bigrams and len(ids) > 1:
            a = np.asarray(ids[:-1], dtype=np.int64)
            b = np.asarray(ids[1:], dtype=np.int64)
            terms.extend((vocab_size + (a * 1_000_003 + b) % BIGRAM_BUCKETS).tolist())
        indices.extend(terms)
        indptr.append(len(indices))
    width = vocab_size + (BIGRAM_BUCKETS if bigrams else 0)
    data = np.ones(len(indices), dtype=np.float32)
    m = sparse.csr_matrix((data, np.asarray(indices, dtype=np.int64), np.asarray(indptr)), shape=(len(rows), width))
    m.sum_duplicates()
    return m


class TokenBM25:
    """Okapi BM25 (k1, b; idf = ln(1 + (N - df + 0.5) / (df + 0.5))) over token-id documents."""

    def __init__(
        self,
        rows: Sequence[Sequence[int]],
        *,
        vocab_size: int,
        bigrams: bool = True,
        ignore: Sequence[int] = (),
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        if not rows:
            raise ValueError("TokenBM25 needs at least one document")
        self.vocab_size, self.bigrams, self.ignore = vocab_size, bigrams, tuple(ignore)
        tf = term_matrix(rows, vocab_size=vocab_size, bigrams=bigrams, ignore=ignore)
        n = tf.shape[0]
        lengths = np.asarray(tf.sum(axis=1)).ravel()
        avg = max(float(lengths.mean()), 1e-9)
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        tf = tf.tocoo()
        norm = k1 * (1 - b + b * lengths[tf.row] / avg)
        weights = tf.data * (k1 + 1) / (tf.data + norm) * self.idf[tf.col]
        self.weights = sparse.csr_matrix((weights.astype(np.float32), (tf.row, tf.col)), shape=tf.shape).T.tocsr()

    def search(
        self,
        queries: Sequence[Sequence[int]],
        *,
        k: int,
        groups: Sequence[int] | None = None,
        query_groups: Sequence[int] | None = None,
        batch: int = 512,
    ) -> list[list[int]]:
        """The k documents scoring highest for each query, best first (ties: lower index). Where `groups` (one
        per document) and `query_groups` (one per query) are given, a query never gets a document of its group."""
        q = term_matrix(queries, vocab_size=self.vocab_size, bigrams=self.bigrams, ignore=self.ignore)
        q.data[:] = 1.0  # each query term counted once, as BM25 sums over the query's terms
        doc_groups = np.asarray(groups) if groups is not None else None
        out: list[list[int]] = []
        for lo in range(0, q.shape[0], batch):
            scores = (q[lo : lo + batch] @ self.weights).toarray()
            if doc_groups is not None and query_groups is not None:
                scores[np.asarray(query_groups[lo : lo + batch])[:, None] == doc_groups[None, :]] = -np.inf
            for row in scores:
                finite = np.isfinite(row) & (row > 0)
                n = min(k, int(finite.sum()))
                if not n:
                    out.append([])
                    continue
                top = np.argpartition(-np.where(finite, row, -np.inf), n - 1)[:n]
                out.append([int(i) for i in top[np.lexsort((top, -row[top]))]])
        return out
