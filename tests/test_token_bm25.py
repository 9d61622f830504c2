"""BM25 over LM token ids, RETRO's lexical neighbours: the Okapi formula exactly, and runs of tokens first."""

from __future__ import annotations

import math

import numpy as np

from grounding.index.token_bm25 import TokenBM25


def okapi(query, docs, k1=1.2, b=0.75):
    """The textbook formula, term by term (unigrams only)."""
    n, avg = len(docs), sum(map(len, docs)) / len(docs)
    out = []
    for doc in docs:
        score = 0.0
        for term in set(query):
            df = sum(term in d for d in docs)
            tf = doc.count(term)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avg)) if tf else 0.0
        out.append(score)
    return out


def test_unigram_scores_are_okapi_bm25_and_padding_is_not_a_term():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(1, 30, size=rng.integers(5, 40))) for _ in range(25)]
    query = list(rng.integers(1, 30, size=12))
    index = TokenBM25([[*d, 0, 0] for d in docs], vocab_size=30, bigrams=False, ignore=(0,))
    expected = okapi(query, docs)
    order = sorted(range(len(docs)), key=lambda i: (-expected[i], i))
    assert index.search([[*query, 0]], k=5) == [order[:5]]


def test_bigrams_put_a_shared_run_above_the_same_tokens_scattered_and_groups_are_left_out():
    run = [5, 6, 7, 8, 9, 10]
    docs = [[10, 8, 6, 9, 7, 5, 1, 2], [1, 2, *run], [3, 4, 11, 12, 13, 14]]
    index = TokenBM25(docs, vocab_size=20, bigrams=True)
    assert index.search([run], k=2) == [[1, 0]]
    assert index.search([run], k=2, groups=[0, 1, 2], query_groups=[1]) == [[0]], "its own file is never returned"
    assert index.search([[15, 16]], k=2) == [[]], "no shared term, no neighbour"
