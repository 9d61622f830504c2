"""Retrieval evaluation: recall@k and MRR, a question set asked of a repository, stored runs.

A question (grounding.evaluation.datasets) asks for a span of one file; a retrieved chunk answers it
when it is in that file and its lines overlap the span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from grounding import db, store
from grounding.errors import DatasetError
from grounding.evaluation.datasets import Question
from grounding.search.retrieve import search

CUTOFFS = (1, 5, 10)
MODES = ("hybrid", "vector", "lexical")
RERANK_SUFFIX = "+rerank"  # on a result's mode when the cross-encoder reordered its hits


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of a question set against one repository in one retrieval mode."""

    repo: str  # the repository searched
    mode: str  # hybrid, vector or lexical, with RERANK_SUFFIX when reranked
    k: int
    ranks: tuple[int | None, ...]  # per question: 1-based rank of the first correct hit, None if missed
    metrics: dict[str, float]
    index_version: int | None  # the active index version when the questions were asked
    encoder: str | None

    @property
    def questions(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class EvalRun:
    """A stored evaluation, as the UI and the promotion gate read it."""

    id: int
    repo: str
    dataset: str
    split: str
    mode: str
    index_version: int | None
    encoder: str | None
    questions: int
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: object | None = None  # datetime


# --- metrics (pure) ----------------------------------------------------------------------------


def answers(citation, question: Question) -> bool:
    """Whether a citation (path, start_line, end_line) answers the question: same file, overlapping lines."""
    return (
        citation.path == question.path
        and citation.start_line <= question.end_line
        and citation.end_line >= question.start_line
    )


def first_correct(citations: Sequence, question: Question) -> int | None:
    """The 1-based rank of the first citation that answers the question, or None."""
    return next((rank for rank, c in enumerate(citations, 1) if answers(c, question)), None)


def retrieval_metrics(ranks: Sequence[int | None], *, k: int = 10) -> dict[str, float]:
    """recall@1/5/10 (the cut-offs up to k) and MRR@k from the rank of each question's first correct hit."""
    if not ranks:
        raise ValueError("no ranks: metrics need at least one question")
    n = len(ranks)
    hits = [r for r in ranks if r is not None and r <= k]
    out = {f"recall@{c}": sum(r <= c for r in hits) / n for c in CUTOFFS if c <= k}
    out[f"mrr@{k}"] = sum(1 / r for r in hits) / n
    return out


# --- evaluation against a repository ------------------------------------------------------------


def evaluate(
    repo: str,
    questions: Sequence[Question],
    *,
    k: int = 10,
    mode: str = "hybrid",
    index_version: int | None = None,
    rerank: bool | str = False,
) -> EvalResult:
    """Ask every question of `repo` through `retrieve.search` and score the ranked hits.

    The active index version answers, or `index_version` (a candidate before the promotion gate).
    With `rerank` (True: the cross-encoder GROUNDING_RERANKER gives the repository; a path: that
    one), it reorders the hits and the result's mode reads e.g. `hybrid+rerank`; without it no
    reranker is used, whatever the settings say.
    """
    if not questions:
        raise DatasetError("no questions to evaluate")
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        version = (
            store.active_index_version(conn, repo_id)
            if index_version is None
            else store.index_version(conn, index_version)
        )
    ranks = tuple(
        first_correct(
            [h.citation for h in search(repo, q.question, k=k, mode=mode, index_version=index_version, rerank=rerank)],
            q,
        )
        for q in questions
    )
    return EvalResult(
        repo=repo,
        mode=f"{mode}{RERANK_SUFFIX}" if rerank is not False else mode,
        k=k,
        ranks=ranks,
        metrics=retrieval_metrics(ranks, k=k),
        index_version=version.id if version else None,
        encoder=version.question_encoder if version else None,
    )


def record_run(repo: str, result: EvalResult, *, dataset: str, split: str) -> int:
    """Store an evaluation under `repo` (the repository it measures, which may differ from the one searched)."""
    with db.get_engine().begin() as conn:
        return store.insert_eval_run(
            conn,
            store.repo_id(conn, repo),
            dataset=dataset,
            split=split,
            mode=result.mode,
            index_version_id=result.index_version,
            encoder=result.encoder,
            questions=result.questions,
            metrics=result.metrics,
        )


def eval_runs(repo: str, *, limit: int | None = None) -> list[EvalRun]:
    """The stored evaluations of `repo`, newest first."""
    with db.get_engine().connect() as conn:
        rows = store.eval_runs(conn, store.repo_id(conn, repo), limit=limit)
    return [EvalRun(repo=repo, **row) for row in rows]
