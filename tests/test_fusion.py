"""Weighted fusion: the arithmetic, choosing weights where one ranker is useless, and the SQL honouring them."""

from __future__ import annotations

import pytest

from grounding.errors import InvalidArgument
from grounding.search.fusion import FusionWeights, choose_weights, default_grid, fuse


def test_fuse_weighs_each_ranking():
    both = [("a", {"vector": 1, "lexical": None}), ("b", {"vector": 3, "lexical": 1})]
    assert fuse(both, FusionWeights(1, 1, 1), rrf_k=5) == ["b", "a"]  # 1/8 + 1/6 beats 1/6
    assert fuse(both, FusionWeights(1, 0, 0), rrf_k=5) == ["a", "b"]
    assert fuse(both, FusionWeights(0, 1, 0), rrf_k=5) == ["b"], "a ranking with weight 0 contributes nothing"


def test_choose_weights_turns_off_a_useless_ranker():
    # The lexical ranking always puts a decoy first; the vector ranking puts the answer first.
    questions = [
        [
            (f"gold{i}", {"vector": 1, "lexical": None, "trigram": None}),
            (f"decoy{i}", {"vector": 3, "lexical": 1, "trigram": None}),
        ]
        for i in range(20)
    ]
    gold = [{f"gold{i}"} for i in range(20)]
    best, scores = choose_weights(questions, gold, default_grid(), rrf_k=5)
    assert best == FusionWeights(1, 0, 0), "lexical gets 0, and trigram (no effect) the simplest value"
    assert scores[best] == 1.0 and scores[FusionWeights(1, 1, 1)] == 0.5


def test_paired_interval_holds_zero_for_noise_and_not_for_a_real_gain():
    from grounding.search.fusion import paired_interval

    same = [0.0, 1.0] * 50
    _, lo, hi = paired_interval(same[::-1], same)
    assert lo < 0 < hi, "two rankings that trade wins are not different"
    diff, lo, _ = paired_interval([1.0] * 80 + [0.0] * 20, [0.0] * 80 + [1.0] * 20)
    assert diff == pytest.approx(0.6) and lo > 0


@pytest.mark.parametrize("text", ["vector=x", "cosine=1", "vector=1,lexical=-1", "vector=0,lexical=0,trigram=0"])
def test_malformed_weights_are_refused(text):
    with pytest.raises(ValueError):
        FusionWeights.parse(text)


def test_hybrid_search_follows_the_configured_weights(engine, repo_name, hashing, tmp_path, monkeypatch):
    from grounding.config import reset_settings
    from grounding.index.ingest import ingest
    from grounding.search.retrieve import search
    from tests.conftest import copy_tree

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    question = "how are cookies merged into the request"

    def paths(mode: str) -> list[tuple[str, int]]:
        return [(h.citation.path, h.citation.start_line) for h in search(repo_name, question, k=8, mode=mode)]

    equal = paths("hybrid")
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", "vector=1,lexical=0,trigram=0")
    reset_settings()
    assert paths("hybrid") == paths("vector") != equal
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", "vector=0,lexical=1,trigram=1")
    reset_settings()
    assert paths("hybrid") == paths("lexical")
    monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", "vector=lots")
    reset_settings()
    with pytest.raises(InvalidArgument, match="GROUNDING_FUSION_WEIGHTS"):
        search(repo_name, question)
