"""Reranking: a cross-encoder from a local directory reorders the fused hits; `grounding eval --rerank`."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from grounding.cli import main
from grounding.config import reset_settings
from grounding.errors import EncoderNotFound
from grounding.evaluation.datasets import Question, save_questions
from grounding.evaluation.metrics import eval_runs
from grounding.index.ingest import ingest
from grounding.records import Citation, Hit
from grounding.search.rerank import CrossEncoderReranker, Reranker, load_reranker, passage, rerank_hits
from grounding.search.retrieve import search
from tests.conftest import copy_tree, save_tiny_bert

QUESTION = "parse the docstring of a function into its parameters"


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A tiny BERT with a one-logit head, as a cross-encoder directory."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-cross-encoder"), "BertForSequenceClassification", num_labels=1)


@pytest.fixture
def indexed(engine, repo_name, hashing, tmp_path):
    src = copy_tree("docstring_parser", tmp_path / "docstring_parser")
    ingest(str(src), name=repo_name, embedder=hashing)
    return repo_name, src


class KeywordReranker(Reranker):
    """Scores a passage by how often it says a word: a rule whose order the test can predict."""

    name = "keyword"

    def __init__(self, word: str) -> None:
        self.word = word
        self.calls: list[int] = []

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        self.calls.append(len(texts))
        return [float(t.count(self.word)) for t in texts]


def hit(chunk_id: int, text: str, score: float) -> Hit:
    return Hit(chunk_id, Citation("r", f"f{chunk_id}.py", 1, 1, None, score, text), score, lexical_rank=chunk_id)


# --- the reranker -------------------------------------------------------------------------------


def test_rerank_orders_by_the_model_and_keeps_fused_order_on_ties():
    hits = [hit(1, "a", 0.9), hit(2, "b b", 0.8), hit(3, "b", 0.7), hit(4, "c", 0.6), hit(5, "b", 0.5)]
    reranker = KeywordReranker("b")
    out = rerank_hits(reranker, "q", hits)
    assert [h.chunk_id for h in out] == [2, 3, 5, 1, 4]
    assert [h.score for h in out] == [2.0, 1.0, 1.0, 0.0, 0.0] == [h.citation.score for h in out]
    assert [h.lexical_rank for h in out] == [2, 3, 5, 1, 4], "the fused ranks stay for inspection"
    assert rerank_hits(reranker, "q", []) == []


def test_rerank_scores_each_passage_once_per_question():
    reranker = KeywordReranker("b")
    known: dict[int, float] = {}
    rerank_hits(reranker, "q", [hit(1, "b", 1), hit(2, "a", 1)], known=known)
    out = rerank_hits(reranker, "q", [hit(1, "b", 1), hit(2, "a", 1), hit(3, "b b", 1)], known=known)
    assert reranker.calls == [2, 1] and [h.chunk_id for h in out] == [3, 1, 2]


def test_a_prior_weight_keeps_some_of_the_fused_order():
    reranker = KeywordReranker("b")
    hits = [hit(1, "a", 1), hit(2, "b", 1)]  # fused order: 1, then 2 (position 1, ln 2 = 0.693)
    assert [h.chunk_id for h in rerank_hits(reranker, "q", hits)] == [2, 1]
    reranker.prior_weight = 1.0  # 1 - 0.693 > 0: the reranker still wins
    out = rerank_hits(reranker, "q", hits)
    assert [h.chunk_id for h in out] == [2, 1] and out[0].score == pytest.approx(1 - math.log(2))
    reranker.prior_weight = 2.0  # 1 - 1.386 < 0: the fused order wins
    assert [h.chunk_id for h in rerank_hits(reranker, "q", hits)] == [1, 2]


def test_a_reranker_that_miscounts_is_refused():
    class Short(KeywordReranker):
        def score(self, question, texts):
            return [1.0]

    with pytest.raises(ValueError, match="returned 1 scores for 2 passages"):
        rerank_hits(Short("x"), "q", [hit(1, "a", 1), hit(2, "b", 1)])


def test_cross_encoder_loads_from_a_local_directory_and_scores_pairs(tiny_cross_encoder):
    reranker = load_reranker(str(tiny_cross_encoder))
    assert isinstance(reranker, CrossEncoderReranker) and load_reranker(str(tiny_cross_encoder)) is reranker
    texts = ["def parse(text):\n    return text.split()", "class Style(Enum):\n    GOOGLE = 1", "x = 1\n" * 400]
    scores = reranker.score(QUESTION, texts)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert len(set(scores)) == 3, "different passages, different scores"
    assert reranker.score(QUESTION, texts[::-1]) == pytest.approx(scores[::-1], abs=1e-5), "batching does not matter"
    assert reranker.score(QUESTION, []) == []


def test_a_missing_cross_encoder_says_what_to_set(tmp_path):
    with pytest.raises(EncoderNotFound, match="GROUNDING_RERANKER"):
        CrossEncoderReranker(tmp_path)


# --- in search ----------------------------------------------------------------------------------


def test_search_reranks_with_the_configured_cross_encoder(indexed, tiny_cross_encoder, monkeypatch):
    name, _ = indexed
    fused = search(name, QUESTION, k=30, merge=False, expand=False)
    with pytest.raises(EncoderNotFound, match="set GROUNDING_RERANKER"):
        search(name, QUESTION, k=5, rerank=True)

    monkeypatch.setenv("GROUNDING_RERANKER", str(tiny_cross_encoder))
    monkeypatch.setenv("GROUNDING_RERANK_CANDIDATES", "30")
    reset_settings()
    reranked = search(name, QUESTION, k=30, merge=False, expand=False)  # rerank=None follows the setting
    model = load_reranker(str(tiny_cross_encoder))
    expected = model.score(QUESTION, [passage(h) for h in reranked])
    assert [h.score for h in reranked] == pytest.approx(expected, abs=1e-5)
    assert [h.score for h in reranked] == sorted(h.score for h in reranked)[::-1]
    assert {h.chunk_id for h in reranked} == {h.chunk_id for h in fused}, "the same candidates, reordered"
    assert [h.chunk_id for h in reranked] != [h.chunk_id for h in fused]

    top5 = search(name, QUESTION, k=5, merge=False, expand=False)
    assert [h.chunk_id for h in top5] == [h.chunk_id for h in reranked[:5]], "the top of all 30 candidates"
    plain = search(name, QUESTION, k=5, rerank=False, merge=False, expand=False)
    assert [h.chunk_id for h in plain] == [h.chunk_id for h in fused[:5]]
    merged = search(name, QUESTION, k=5)
    assert len(merged) == 5 and merged[0].score == pytest.approx(reranked[0].score, abs=1e-5)


# --- grounding eval --rerank --------------------------------------------------------------------


def test_grounding_eval_with_and_without_the_reranker(indexed, tiny_cross_encoder, tmp_path, monkeypatch, capsys):
    name, src = indexed
    lines = (src / "common.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines, 1) if line.startswith("class DocstringParam"))
    dataset = save_questions(
        tmp_path / "q.jsonl",
        [
            Question("DocstringParam", "common.py", start, start + 5),
            Question("parse a google style docstring", "google.py", 1, 400),
            Question("a question about nothing at all", "missing.py", 1, 1),
        ],
    )
    assert main(["eval", name, "--dataset", str(dataset), "--rerank"]) == 1
    assert "set GROUNDING_RERANKER" in capsys.readouterr().err
    assert eval_runs(name) == []

    monkeypatch.setenv("GROUNDING_RERANKER", str(tiny_cross_encoder))
    reset_settings()
    assert main(["eval", name, "--dataset", str(dataset), "--mode", "all", "--rerank"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(\w+(?:\+rerank)?) +((?:[0-9.]+ +){4})(\d+)$", out, re.M)
    modes = [m for m, _, _ in rows]
    assert modes == ["hybrid", "hybrid+rerank", "vector", "vector+rerank", "lexical", "lexical+rerank"], out
    figures = {m: [float(x) for x in f.split()] for m, f, _ in rows}
    assert all(0 <= x <= 0.667 for f in figures.values() for x in f), "the missing file is never found"
    runs = eval_runs(name)
    assert [r.mode for r in runs] == modes[::-1] and {r.questions for r in runs} == {3}
    by_mode = {r.mode: r for r in runs}
    assert [round(by_mode["hybrid+rerank"].metrics[m], 3) for m in ("recall@1", "recall@5", "recall@10", "mrr@10")] == (
        figures["hybrid+rerank"]
    )

    assert main(["eval", name, "--dataset", str(dataset)]) == 0
    assert re.findall(r"^(\S+) ", capsys.readouterr().out, re.M)[-2:] == ["mode", "hybrid"], "no --rerank: one row"


def test_search_reranks_only_as_many_candidates_as_the_setting_names(indexed, monkeypatch):
    """Merging fetches 3k fused hits: the reranker still reads only GROUNDING_RERANK_CANDIDATES of them, the first."""
    import grounding.search.rerank

    name, _ = indexed
    counting = KeywordReranker("def")
    monkeypatch.setattr(grounding.search.rerank, "load_reranker", lambda path: counting)
    monkeypatch.setenv("GROUNDING_RERANKER", "/a/cross-encoder")
    monkeypatch.setenv("GROUNDING_RERANK_CANDIDATES", "4")
    reset_settings()
    fused = search(name, QUESTION, k=10, rerank=False, merge=False, expand=False)
    hits = search(name, QUESTION, k=10, merge=False, expand=False)
    assert sum(counting.calls) == 4, "four passages read, not the ten fetched"
    assert {h.chunk_id for h in hits[:4]} == {h.chunk_id for h in fused[:4]}, "the head is the fused head, reordered"
    assert [h.chunk_id for h in hits[4:]] == [h.chunk_id for h in fused[4:]], "the rest keep their fused order"
    assert all(h.score <= min(x.score for x in hits[:4]) for h in hits[4:])
    counting.calls.clear()
    search(name, QUESTION, k=10)  # merging: 30 fused hits fetched
    assert 0 < sum(counting.calls) <= 4


def test_a_checkpoint_without_the_head_is_refused_not_loaded_at_random(tmp_path):
    """A base encoder given as the cross-encoder: transformers would start its classifier at random, and say
    so only in a log line our default verbosity hides. It must be our error instead, naming what to set."""
    base = save_tiny_bert(tmp_path / "base", "BertModel")
    with pytest.raises(EncoderNotFound, match=r"lacks 2 of the model's tensors \(classifier\.\w+, classifier\.\w+\)"):
        CrossEncoderReranker(base)


def test_the_encoder_refuses_a_checkpoint_whose_tensors_do_not_fit(tmp_path):
    """A checkpoint saved under other names (another library's prefix): its encoder layers would start at random."""
    from safetensors.torch import load_file, save_file

    from grounding.index.embed import HFEncoder

    HFEncoder(save_tiny_bert(tmp_path / "bert"), device="cpu")  # a whole encoder loads
    other = save_tiny_bert(tmp_path / "other")
    tensors = load_file(other / "model.safetensors")
    save_file({k.replace("encoder.", "body."): v for k, v in tensors.items()}, other / "model.safetensors")
    with pytest.raises(EncoderNotFound, match=r"encoder\.layer\.\d+\..*would start at random; set GROUNDING_ENCODER"):
        HFEncoder(other, device="cpu")
