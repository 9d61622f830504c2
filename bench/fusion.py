"""Choose hybrid fusion's default weights on public dev data, file level, with paired intervals.

The sets are bench/quality.py's: CoSQA dev-500 and commit-message localisation on click, gin and
express. The choice maximises the mean of the sets' MRR@10 (each set counts once, whatever its size).
Each question's candidates (the vector, BM25 and trigram rankings' first GROUNDING_CANDIDATES,
with each one's rank in each) are fetched once from Postgres; every (weights, rrf_k) of the grid then
fuses them in Python (grounding.search.fusion.fuse, the same arithmetic as the SQL). Prints the grid's best
entries, and the chosen one against equal weights and against the vector ranking alone, each with a
paired bootstrap 95% interval. Reuse the home bench/quality.py ingested CoSQA into:

    python bench/fusion.py --home /tmp/qhome --sets cosqa,click,gin,express
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import K, by_file, dev_set, log, matches, paired_interval  # noqa: E402

RRF_KS = (5, 10, 30, 60)
PRIORS = (1.0, 0.75, 0.5, 0.3, 0.15)


def candidates_of(
    repo: str, questions: list[tuple[str, frozenset]], describe=None
) -> list[list[tuple[tuple, dict, object]]]:
    """Per question: (span, {ranker: rank}, what `describe(hit, favoured)` says of it) of every candidate
    any ranking found; by default the role factor at prior 0.

    That factor is 1 for a chunk of a favoured role (implementation, or a role the question asks for), 0
    otherwise; a prior p then multiplies the others' fused score by p."""
    from grounding import db, store
    from grounding.evaluation.tuning import candidate_hits
    from grounding.roles import asked_roles

    describe = describe or (lambda hit, favoured: 1.0 if favoured else 0.0)
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        version = store.active_index_version(conn, repo_id)
    out = []
    for (query, _), hits in zip(questions, candidate_hits(repo_id, version, [q for q, _ in questions])):
        favoured = {"source", *asked_roles(query)}
        out.append(
            [
                (
                    (h.citation.path, h.citation.start_line, h.citation.end_line),
                    {"vector": h.vector_rank, "lexical": h.lexical_rank, "trigram": h.trigram_rank},
                    describe(h, h.citation.role in favoured),
                )
                for h in hits
            ]
        )
    return out


def dev_candidates(home: str, names: str, candidates=candidates_of) -> dict:
    """{set: (candidates(repo, questions), questions)} of bench/quality.py's dev sets ingested under `home`."""
    from grounding import db
    from grounding.config import reset_settings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["GROUNDING_HOME"] = home
    reset_settings()
    sets = {}
    try:
        for name in names.split(","):
            repo, questions = dev_set(name, Path(home) / "sets")
            t = time.perf_counter()
            sets[name] = (candidates(repo, questions), questions)
            log(f"{name}: candidates of {len(questions)} questions in {time.perf_counter() - t:.0f}s")
    finally:
        db.reset()
        db.stop_embedded()
    return sets


def reciprocal_ranks(cands, questions, weights, rrf_k, prior=1.0, factor=None) -> list[float]:
    """Per question, 1/rank of the first gold hit within K of the candidates fused offline; each candidate's
    fused score times `factor(description)` (by default: 1 for a favoured role, else `prior`)."""
    from grounding.search.fusion import fuse

    factor = factor or (lambda favoured: 1.0 if favoured else prior)
    rr = []
    for found, (_, gold) in zip(cands, questions):
        factors = {span: factor(d) for span, _, d in found}
        ranked = fuse([(span, ranks) for span, ranks, _ in found], weights, rrf_k=rrf_k, factors=factors)
        if all(isinstance(g, str) for g in gold):
            ranked = by_file(ranked)
        rank = next((i for i, hit in enumerate(ranked[:K], 1) if matches(hit, gold)), 0)
        rr.append(1 / rank if rank else 0.0)
    return rr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the GROUNDING_HOME bench/quality.py ingested the sets into")
    parser.add_argument("--sets", default="cosqa,click,gin,express")
    args = parser.parse_args(argv)
    sets = dev_candidates(args.home, args.sets)
    from grounding.search.fusion import FusionWeights, default_grid

    def score(w, rrf_k, prior) -> dict:
        per_set = {}
        for name, (cands, questions) in sets.items():
            rr = reciprocal_ranks(cands, questions, w, rrf_k, prior)
            per_set[name] = (sum(rr) / len(rr), rr)
        return per_set

    results: dict = {}  # (weights, rrf_k, prior) -> {set: (mrr, per-question rr)}

    def mean(key) -> float:
        if key not in results:
            results[key] = score(*key)
        return sum(m for m, _ in results[key].values()) / len(sets)

    # Coordinate ascent: weights and rrf_k at a middle prior, then the prior, then the weights again.
    best = max(((w, k, 0.5) for k in RRF_KS for w in default_grid()), key=mean)
    best = max(((best[0], best[1], p) for p in PRIORS), key=mean)
    best = max(((w, k, best[2]) for k in RRF_KS for w in default_grid()), key=mean)
    ranked = sorted(results, key=lambda key: -mean(key))
    print(f"{'weights':36}{'rrf_k':>6}{'prior':>6}{'mean':>8}" + "".join(f"{n:>9}" for n in sets))
    before, alone, bm25 = (
        (FusionWeights(1, 0.25, 0.1), 5, 1.0),
        (FusionWeights(1, 0, 0), 5, 1.0),
        (FusionWeights(0, 1, 0), 5, 1.0),
    )
    for key in dict.fromkeys([*ranked[:8], *((best[0], best[1], p) for p in PRIORS), before, alone, bm25]):
        total = mean(key)
        row = "".join(f"{results[key][n][0]:>9.3f}" for n in sets)
        print(f"{str(key[0]):36}{key[1]:>6}{key[2]:>6}{total:>8.3f}{row}")
    print(f"\nchosen: {best[0]} rrf_k={best[1]} role_prior={best[2]}")
    for label, other in (
        ("the weights before (vector=1,lexical=0.25,trigram=0.1), no prior", before),
        ("vector alone", alone),
        ("bm25 alone", bm25),
        ("the chosen weights without the prior", (best[0], best[1], 1.0)),
    ):
        mean(other)
        for name in sets:
            diff, lo, hi = paired_interval(results[best][name][1], results[other][name][1])
            print(f"  {name:8} chosen - {label}: {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
