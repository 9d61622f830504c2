"""Weighted reciprocal-rank fusion of the retrievers' rankings, and choosing its weights on validation (pure).

Equal-weight RRF lets two weak rankings outvote a strong one: on CoSQA dev-500 hybrid lost 0.09 MRR@10
to the vector ranking alone (bench/quality.py). Each retriever therefore has a weight, and a chunk's
fused score is the sum over the rankings that hold it of weight / (rrf_k + rank). A weight of 0 turns a
retriever off. `choose_weights` picks the weights that rank validation questions best, preferring, among
equal scores, the grid's earlier (simpler) entries; bench/fusion.py chose the defaults with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

RANKERS = ("vector", "lexical", "trigram")
DEFAULT_WEIGHTS = "vector=1,lexical=0.5,trigram=0.25"  # chosen by bench/fusion.py on public dev sets


@dataclass(frozen=True)
class FusionWeights:
    """One weight per retriever; 0 leaves that retriever out of the search altogether."""

    vector: float = 1.0
    lexical: float = 1.0
    trigram: float = 1.0

    def __post_init__(self) -> None:
        for name in RANKERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ValueError(f"fusion weight {name} must be a number from 0 to 100, not {value!r}")
        if not any(getattr(self, name) for name in RANKERS):
            raise ValueError("at least one fusion weight must be above 0")

    @classmethod
    def parse(cls, text: str) -> FusionWeights:
        """`vector=1,lexical=0.25,trigram=0.5` (names may be left out: they keep 1)."""
        values = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in RANKERS:
                raise ValueError(f"fusion weights are NAME=NUMBER for {', '.join(RANKERS)}, not {part!r}")
            try:
                values[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"fusion weight {name.strip()} must be a number, not {value!r}") from None
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{name}={getattr(self, name):g}" for name in RANKERS)


# A candidate: its id and its 1-based rank in each ranking that holds it (None where absent).
Candidate = tuple[object, Mapping[str, int | None]]


def fuse(
    candidates: Iterable[Candidate],
    weights: FusionWeights,
    *,
    rrf_k: int,
    factors: Mapping[object, float] | None = None,
) -> list[object]:
    """Candidate ids by fused score, best first; ties keep the order the candidates came in.

    `factors` multiplies some candidates' fused scores (the role prior: store.hybrid_search does the same)."""
    scored = []
    for order, (cid, ranks) in enumerate(candidates):
        score = sum(getattr(weights, n) / (rrf_k + r) for n, r in ranks.items() if r is not None)
        if factors:
            score *= factors.get(cid, 1.0)
        if score > 0:
            scored.append((-score, order, cid))
    return [cid for *_, cid in sorted(scored)]


def reciprocal_ranks(rankings: Sequence[Sequence[object]], gold: Sequence[set], *, k: int = 10) -> list[float]:
    """Per ranking: 1 / the rank of its first gold id within k, 0 if none."""
    return [
        next((1 / i for i, cid in enumerate(ranked[:k], 1) if cid in answers), 0.0)
        for ranked, answers in zip(rankings, gold)
    ]


def mrr(rankings: Sequence[Sequence[object]], gold: Sequence[set], *, k: int = 10) -> float:
    """Mean reciprocal rank within k of the first gold id of each ranking."""
    return sum(reciprocal_ranks(rankings, gold, k=k)) / max(len(gold), 1)


def paired_interval(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a - b) over paired per-question scores, and its bootstrap 95% interval (questions resampled)."""
    import random

    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n == 0:
        return 0.0, 0.0, 0.0
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def choose_weights(
    questions: Sequence[Sequence[Candidate]],
    gold: Sequence[set],
    grid: Sequence[FusionWeights],
    *,
    rrf_k: int,
    k: int = 10,
    factors: Sequence[Mapping[object, float]] | None = None,
) -> tuple[FusionWeights, dict[FusionWeights, float]]:
    """The grid entry whose fusion ranks the validation questions best by MRR@k, and every entry's MRR.

    `factors`, one mapping per question, multiplies candidates' fused scores as serving does (the role prior)."""
    if not questions or len(questions) != len(gold):
        raise ValueError(f"need as many gold sets as questions, and some: {len(questions)} and {len(gold)}")
    per_question = factors or [None] * len(questions)
    scores = {
        w: mrr([fuse(c, w, rrf_k=rrf_k, factors=f) for c, f in zip(questions, per_question)], gold, k=k) for w in grid
    }
    best = max(grid, key=lambda w: (scores[w], -grid.index(w)))
    return best, scores


def default_grid() -> list[FusionWeights]:
    """Vector alone first, then lexical and trigram weights from 0 to 1 beside it, then the lexical side alone."""
    steps = (0.0, 0.1, 0.25, 0.5, 1.0)
    return [FusionWeights(1.0, lex, tri) for lex in steps for tri in steps] + [
        FusionWeights(0.0, 1.0, tri) for tri in steps
    ]
