"""Fusion weights chosen for one index version on validation questions its own repository yields.

The defaults (grounding.search.fusion.DEFAULT_WEIGHTS) were chosen on public dev data; a repository may differ
(more identifiers in its questions, fewer docstrings, another language). `tune_fusion` harvests the
repository's questions into its eval index (grounding.evaluation.eval_index: docstrings cut out, or commit
subjects asked of the tree before them), takes the train split (the held-out split stays for the
promotion gate), fetches each question's candidates once with every ranker's rank, and picks the grid
entry that ranks the gold chunks best under the role prior search applies
(grounding.search.fusion.choose_weights): a ranker that does not help gets weight 0. That entry replaces the
defaults only if it beats them on these questions with a paired bootstrap interval above 0: harvested
questions share words with the code, and weights chosen on them alone lost on real questions
(README, "Ranking, measured"). The choice is stored
with the repository's active index version, with the table that made it, and hybrid search uses it
(and the repository's eval indexes) while GROUNDING_FUSION_WEIGHTS is `auto`, the default.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from grounding import db, store, validation
from grounding.config import get_settings
from grounding.errors import NotIndexed
from grounding.index.embed import load_embedder
from grounding.lexical import question_tokens
from grounding.records import Hit, IndexVersion
from grounding.roles import IMPLEMENTATION, asked_roles
from grounding.search.fusion import (
    DEFAULT_WEIGHTS,
    FusionWeights,
    choose_weights,
    default_grid,
    fuse,
    paired_interval,
    reciprocal_ranks,
)

log = logging.getLogger(__name__)

MAX_QUESTIONS = 300
MIN_QUESTIONS = 20  # fewer than this and the table is noise: the defaults stay


@dataclass(frozen=True)
class FusionChoice:
    repo: str
    index_version: int
    weights: FusionWeights
    questions: int
    table: dict[str, float]  # MRR@10 on the validation questions, by weights
    stored: bool  # False when too few questions: nothing is stored, the defaults stay
    best: FusionWeights | None = None  # the grid's best entry, adopted only if it beats the defaults
    gain: tuple[float, float, float] = (0.0, 0.0, 0.0)  # best minus defaults: MRR@10 and its 95% interval

    def describe(self) -> str:
        if not self.stored:
            return (
                f"{self.repo}: {self.questions} validation questions (fewer than {MIN_QUESTIONS}); "
                f"index version {self.index_version} keeps the defaults ({DEFAULT_WEIGHTS})"
            )
        diff, lo, hi = self.gain
        versus = f"best {self.best} minus the defaults {DEFAULT_WEIGHTS}: {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        if self.best != self.weights:
            return (
                f"{self.repo}: index version {self.index_version} keeps the defaults {self.weights}: "
                f"on {self.questions} validation questions the {versus}, an interval that holds 0"
            )
        return (
            f"{self.repo}: index version {self.index_version} fuses by {self.weights} "
            f"(MRR@10 {self.table[str(self.weights)]:.3f} on {self.questions} validation questions; {versus})"
        )


def candidate_hits(repo_id: int, version: IndexVersion, questions: Sequence[str]) -> list[list[Hit]]:
    """Per question, every candidate of every ranking, each hit with its rank in each ranking, the role prior off:
    what any fusion weights (and prior) can be tried on offline, with the SQL's arithmetic
    (grounding.search.fusion.fuse)."""
    from grounding.search.retrieve import identifier_fragments

    settings = get_settings()
    vectors = load_embedder(version.question_encoder).embed(list(questions), batch_size=settings.embed_batch_size)
    out = []
    for question, vector in zip(questions, vectors):
        with db.get_engine().begin() as conn:
            out.append(
                store.hybrid_search(
                    conn,
                    repo_id,
                    version,
                    query_vector=vector,
                    terms=question_tokens(question),
                    fragments=identifier_fragments(question),
                    candidates=settings.candidates,
                    rrf_k=settings.rrf_k,
                    k=3 * settings.candidates,  # the union of every ranking's candidates
                    role_prior=1.0,
                )
            )
    return out


def tune_fusion(repo: str, *, harvester: str = "docstrings", max_questions: int = MAX_QUESTIONS) -> FusionChoice:
    """Choose and store the fusion weights of `repo`'s active index version (a trusted caller's operation)."""
    from grounding.evaluation.datasets import select_split
    from grounding.evaluation.eval_index import build_eval_index

    repo = validation.repo_name(repo)
    max_questions = validation.count(max_questions, "max_questions", maximum=10_000)
    index = build_eval_index(repo, harvester=harvester)
    questions = select_split(index.questions, "train")
    if len(questions) > max_questions:
        questions = random.Random(0).sample(questions, max_questions)
    settings = get_settings()
    engine = db.get_engine()
    with engine.connect() as conn:
        target = store.active_index_version(conn, store.repo_id(conn, repo))
        derived_id = store.repo_id(conn, index.name)
        derived = store.active_index_version(conn, derived_id)
    if target is None or derived is None:
        raise NotIndexed(f"repository {repo!r} has no active index version; ingest it first")
    if len(questions) < MIN_QUESTIONS:
        log.info("%s: %d validation questions; the default fusion weights stay", repo, len(questions))
        keep_defaults(repo, f"{len(questions)} validation questions from {harvester}, fewer than {MIN_QUESTIONS}")
        return FusionChoice(repo, target.id, FusionWeights.parse(DEFAULT_WEIGHTS), len(questions), {}, stored=False)
    candidates, gold, factors = [], [], []
    for q, hits in zip(questions, candidate_hits(derived_id, derived, [q.question for q in questions])):
        candidates.append(
            [
                (h.chunk_id, {"vector": h.vector_rank, "lexical": h.lexical_rank, "trigram": h.trigram_rank})
                for h in hits
            ]
        )
        gold.append(
            {
                h.chunk_id
                for h in hits
                if h.citation.path == q.path
                and h.citation.start_line <= q.end_line
                and h.citation.end_line >= q.start_line
            }
        )
        favoured = {IMPLEMENTATION, *asked_roles(q.question)}  # the role prior, as search applies it
        factors.append({h.chunk_id: settings.role_prior for h in hits if h.citation.role not in favoured})
    best, scores = choose_weights(candidates, gold, default_grid(), rrf_k=settings.rrf_k, factors=factors)
    table = {str(w): round(m, 4) for w, m in scores.items()}
    # Harvested questions are not users' questions (docstrings share words with the code): the grid's best
    # is adopted only when it beats the defaults beyond the noise of these questions.
    default = FusionWeights.parse(DEFAULT_WEIGHTS)

    def per_question(w: FusionWeights) -> list[float]:
        ranked = [fuse(c, w, rrf_k=settings.rrf_k, factors=f) for c, f in zip(candidates, factors)]
        return reciprocal_ranks(ranked, gold)

    gain = paired_interval(per_question(best), per_question(default))
    chosen = best if gain[1] > 0 else default
    with engine.begin() as conn:
        store.set_fusion(
            conn,
            target.id,
            {
                "weights": str(chosen),
                "best": str(best),
                "gain_over_defaults": [round(x, 4) for x in gain],
                "rrf_k": settings.rrf_k,
                "harvester": harvester,
                "questions": len(questions),
                "mrr@10": table,
            },
        )
    choice = FusionChoice(repo, target.id, chosen, len(questions), table, stored=True, best=best, gain=gain)
    log.info("%s", choice.describe())
    return choice


def keep_defaults(repo: str, why: str) -> None:
    """Mark `repo`'s active version as tuned to the defaults (`why` says why), so flows do not try again."""
    engine = db.get_engine()
    with engine.begin() as conn:
        version = store.active_index_version(conn, store.repo_id(conn, repo))
        if version is not None:
            store.set_fusion(conn, version.id, {"weights": DEFAULT_WEIGHTS, "kept_defaults": why})
