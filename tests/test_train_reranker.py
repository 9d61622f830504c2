"""`grounding train-reranker`: a cross-encoder trained on the repository's own questions, gated, then served."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from grounding.config import reset_settings
from grounding.errors import DatasetError, EncoderNotFound
from grounding.evaluation.datasets import Question
from grounding.evaluation.metrics import eval_runs
from grounding.search.rerank import CONFIG_FILE, CrossEncoderReranker, Reranker, load_reranker, passage
from grounding.search.retrieve import search
from grounding.training.reranker import (
    PRIOR_WEIGHTS,
    Candidates,
    RerankerConfig,
    candidates_for,
    promoted_reranker,
    reranked_mrr,
    train_reranker,
)
from grounding.training.runs import training_metrics, training_runs
from tests.conftest import copy_tree

QUESTION = "Prepares the given HTTP headers"


@pytest.fixture
def requests_repo(engine, repo_name, hashing, tmp_path, monkeypatch):
    """requests, ingested with the hashing encoder; the reranker reorders its first 10 fused hits."""
    from grounding.index.ingest import ingest

    monkeypatch.setenv("GROUNDING_ENCODER", "hashing-64")
    monkeypatch.setenv("GROUNDING_RERANK_CANDIDATES", "10")
    reset_settings()
    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    return repo_name


def tiny_config(base, **overrides) -> RerankerConfig:
    defaults = dict(base=str(base), steps=12, batch_size=4, lr=1e-3, eval_every=6, max_tokens=96, log_every=3)
    defaults.update(validation_percent=40, min_validation=5, max_validation=20)
    return RerankerConfig(**{**defaults, **overrides})


class WordCount(Reranker):
    name = "word-count"

    def __init__(self, word: str) -> None:
        self.word = word

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        return [float(t.count(self.word)) for t in texts]


def test_reranked_mrr_ranks_by_score_and_keeps_the_fused_order_on_ties():
    examples = [
        Candidates("q", "a.py", ("x", "y gold", "z"), (False, True, False)),  # fused rank 2; by score 1
        Candidates("q", "b.py", ("gold", "x"), (True, False)),  # 1 either way
        Candidates("q", "c.py", ("x", "y"), (False, False)),  # the answer was not among the candidates
    ]
    assert reranked_mrr(None, examples) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert reranked_mrr(WordCount("gold"), examples) == pytest.approx((1 + 1 + 0) / 3)
    assert reranked_mrr(WordCount("nothing"), examples) == pytest.approx((1 / 2 + 1 + 0) / 3), "ties: fused order"
    assert reranked_mrr(WordCount("gold"), examples, k=1) == pytest.approx(2 / 3)
    # A prior weight keeps some of the fused order: 1 - w ln 2 < 0 once w > 1 / ln 2, and "gold" falls back to 2.
    assert reranked_mrr(WordCount("gold"), examples, prior_weight=1.0) == pytest.approx((1 + 1 + 0) / 3)
    assert reranked_mrr(WordCount("gold"), examples, prior_weight=2.0) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert examples[0].trainable and examples[1].trainable and not examples[2].trainable


def test_candidates_are_the_fused_hits_marked_by_whether_they_answer(requests_repo):
    from grounding.evaluation.metrics import answers

    asked = "Send a given PreparedRequest"  # Session.send is long: split into fragments, which serving widens
    hits = search(requests_repo, asked, k=10, mode="hybrid", rerank=False, merge=False, expand=False)
    assert any(h.citation.kind == "fragment" for h in hits), "fragments: candidates are taken before expansion"
    gold = next(h.citation for h in hits)  # whatever ranks first is, by construction, the right answer here
    question = Question(asked, gold.path, gold.start_line, gold.end_line)
    (ex,) = candidates_for(requests_repo, [question], n=10)
    assert ex.passages == tuple(passage(h) for h in hits), "exactly what serving hands the reranker"
    assert ex.relevant == tuple(answers(h.citation, question) for h in hits) and ex.relevant[0]
    assert ex.passages[0].startswith(f"{gold.path}\n")


def test_train_reranker_trains_records_gates_and_serves_the_promoted_model(requests_repo, tiny_encoder, capsys):
    from grounding.cli import main

    assert promoted_reranker(requests_repo) is None
    plain = search(requests_repo, QUESTION, k=5, merge=False, expand=False)  # the default: `promoted`, none yet

    report = train_reranker(requests_repo, config=tiny_config(tiny_encoder), margin=-1.0, device="cpu")
    assert report.decision.promoted  # margin -1 promotes anything with a held-out MRR above 0
    m = report.metrics
    assert m["reranker_train_questions"] >= 2 and m["reranker_validation_questions"] >= 5
    assert m["reranker_best_step"] in (6, 12), "a validation step, never the random head of step 0"
    assert 0 < m["train_answer_in_candidates"] <= 1
    assert set(m["heldout"]) == {"hybrid", "hybrid+candidate"} and m["baseline"] == "hybrid"

    (run,) = training_runs(requests_repo, kind="reranker")
    assert (run.status, run.decision, run.checkpoint) == ("complete", "promoted", report.checkpoint)
    steps = [row["step"] for row in training_metrics(run.id, stage="reranker")]
    assert steps == [1, 3, 6, 9, 12]
    validated = [row["metrics"] for row in training_metrics(run.id, stage="reranker") if "val_mrr" in row["metrics"]]
    assert [v["val_mrr_fused"] for v in validated] == [m["reranker_val_mrr_fused"]] * 2
    assert max(v["val_mrr_with_prior"] for v in validated) == pytest.approx(m["reranker_val_mrr_best"])
    assert all(v["val_mrr_with_prior"] >= v["val_mrr"] for v in validated), "weight 0 is among those tried"

    # The held-out figures are stored evaluations of the repository: hybrid beside hybrid+rerank.
    stored = {r.mode: r.metrics for r in eval_runs(requests_repo)}
    assert stored["hybrid"] == m["heldout"]["hybrid"] and stored["hybrid+rerank"] == m["heldout"]["hybrid+candidate"]

    # The checkpoint is a Hugging Face cross-encoder directory with its training config beside it.
    meta = json.loads(Path(report.checkpoint, CONFIG_FILE).read_text())
    assert meta["max_tokens"] == 96 and meta["run_id"] == run.id and meta["config"]["steps"] == 12
    assert meta["prior_weight"] == m["reranker_prior_weight"] and meta["prior_weight"] in PRIOR_WEIGHTS
    loaded = CrossEncoderReranker(report.checkpoint)
    assert loaded.max_tokens == 96, "the length it was trained on"
    assert loaded.prior_weight == meta["prior_weight"]

    # Promoted: searches of the repository now rerank with it, unless told otherwise.
    assert promoted_reranker(requests_repo) == report.checkpoint
    reranked = search(requests_repo, QUESTION, k=10, merge=False, expand=False)
    model = load_reranker(report.checkpoint)
    fused = search(requests_repo, QUESTION, k=10, rerank=False, merge=False, expand=False)
    position = {h.chunk_id: i for i, h in enumerate(fused)}
    raw = dict(zip([h.chunk_id for h in fused], model.score(QUESTION, [passage(h) for h in fused])))
    expected = [raw[h.chunk_id] - model.prior_weight * math.log(position[h.chunk_id] + 1) for h in reranked]
    assert [h.score for h in reranked] == pytest.approx(expected, abs=1e-5)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    assert [h.score for h in search(requests_repo, QUESTION, k=5, rerank=False, merge=False, expand=False)] == [
        h.score for h in plain
    ]

    # `grounding eval --rerank` finds the promoted model without any setting.
    assert main(["eval", requests_repo, "--rerank"]) == 0
    assert "hybrid+rerank" in capsys.readouterr().out


def test_gate_retires_a_reranker_that_does_not_beat_what_is_served(requests_repo, tiny_encoder, monkeypatch, capsys):
    from grounding.cli import main

    code = main(
        ["train-reranker", requests_repo, "--base", str(tiny_encoder), "--steps", "3", "--batch-size", "2"]
        + ["--margin", "100", "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "retired: held-out MRR" in out and "hybrid+candidate" in out
    (run,) = training_runs(requests_repo, kind="reranker")
    assert run.decision == "retired" and promoted_reranker(requests_repo) is None
    assert search(requests_repo, QUESTION, k=3, rerank=False) == search(requests_repo, QUESTION, k=3)

    with pytest.raises(EncoderNotFound, match=f"grounding train-reranker {requests_repo}"):
        search(requests_repo, QUESTION, k=3, rerank=True)

    # A promoted one is used only while GROUNDING_RERANKER is `promoted`: `off` turns reranking off.
    report = train_reranker(requests_repo, config=tiny_config(tiny_encoder, steps=3), margin=-1.0, device="cpu")
    assert report.decision.promoted and report.metrics["baseline"] == "hybrid"
    reranked = search(requests_repo, QUESTION, k=3, merge=False, expand=False)
    monkeypatch.setenv("GROUNDING_RERANKER", "off")
    reset_settings()
    unranked = search(requests_repo, QUESTION, k=3, merge=False, expand=False)
    assert [h.score for h in unranked] != [h.score for h in reranked]
    assert [h.chunk_id for h in unranked] == [
        h.chunk_id for h in search(requests_repo, QUESTION, k=3, rerank=False, merge=False, expand=False)
    ]


def test_a_repository_without_questions_is_a_clear_error(engine, repo_name, hashing, tmp_path, tiny_encoder):
    from grounding.index.ingest import ingest

    src = tmp_path / "bare"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    ingest(str(src), name=repo_name, embedder=hashing)
    with pytest.raises(DatasetError, match="question"):
        train_reranker(repo_name, config=tiny_config(tiny_encoder), device="cpu")
    (run,) = training_runs(repo_name, kind="reranker")
    assert run.status == "failed" and "DatasetError" in run.error
