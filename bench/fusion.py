"""Choose hybrid fusion's default weights on public dev data, file level, with paired intervals.

The sets are bench/quality.py's: CoSQA dev-500 and commit-message localisation on click, gin and
express. The choice maximises the mean of the sets' MRR@10 (each set counts once, whatever its size).
Each question's candidates (the vector, full-text and trigram rankings' first GROUNDING_CANDIDATES,
with each one's rank in each) are fetched once from Postgres; every (weights, rrf_k) of the grid then
fuses them in Python (grounding.fusion.fuse, the same arithmetic as the SQL). Prints the grid's best
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

from quality import K, by_file, commits_set, cosqa_set, log, paired_interval  # noqa: E402

RRF_KS = (5, 10, 30, 60)


def candidates_of(repo: str, questions: list[tuple[str, frozenset[str]]]) -> list[list[tuple[str, dict]]]:
    """Per question: (path, {ranker: rank}) of every candidate any ranking found."""
    from grounding import db, store
    from grounding.config import get_settings
    from grounding.embed import load_embedder
    from grounding.filters import chunk_filter
    from grounding.retrieve import identifier_fragments, query_terms, to_tsquery_text

    settings = get_settings()
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        version = store.active_index_version(conn, repo_id)
    embedder = load_embedder(version.question_encoder)
    out = []
    for query, _ in questions:
        with db.get_engine().begin() as conn:
            hits = store.hybrid_search(
                conn,
                repo_id,
                version,
                query_vector=embedder.embed_batch([query])[0],
                tsquery=to_tsquery_text(query_terms(query)),
                fragments=identifier_fragments(query),
                candidates=settings.candidates,
                rrf_k=60,
                k=3 * settings.candidates,  # every candidate of every ranking
                filters=chunk_filter(None),
            )
        out.append(
            [
                (h.citation.path, {"vector": h.vector_rank, "lexical": h.lexical_rank, "trigram": h.trigram_rank})
                for h in hits
            ]
        )
    return out


def reciprocal_ranks(cands, questions, weights, rrf_k) -> list[float]:
    from grounding.fusion import fuse

    rr = []
    for found, (_, gold) in zip(cands, questions):
        ranked = by_file(fuse(found, weights, rrf_k=rrf_k))[:K]
        rank = next((i for i, p in enumerate(ranked, 1) if p in gold), 0)
        rr.append(1 / rank if rank else 0.0)
    return rr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the GROUNDING_HOME bench/quality.py ingested the sets into")
    parser.add_argument("--sets", default="cosqa,click,gin,express")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["GROUNDING_HOME"] = args.home
    from grounding import db
    from grounding.config import reset_settings
    from grounding.fusion import FusionWeights, default_grid

    reset_settings()
    sets = {}
    try:
        for name in args.sets.split(","):
            if name == "cosqa":
                repo, (_, questions) = "cosqa", cosqa_set(Path(args.home) / "sets")
            else:
                repo, _, questions = commits_set(name, Path(args.home) / "sets")
            t = time.perf_counter()
            sets[name] = (candidates_of(repo, questions), questions)
            log(f"{name}: candidates of {len(questions)} questions in {time.perf_counter() - t:.0f}s")
    finally:
        db.reset()
        db.stop_embedded()
    results = {}  # (weights, rrf_k) -> {set: (mrr, per-question rr)}
    for rrf_k in RRF_KS:
        for w in default_grid():
            per_set = {}
            for name, (cands, questions) in sets.items():
                rr = reciprocal_ranks(cands, questions, w, rrf_k)
                per_set[name] = (sum(rr) / len(rr), rr)
            results[(w, rrf_k)] = per_set

    def mean(key) -> float:
        return sum(m for m, _ in results[key].values()) / len(sets)

    ranked = sorted(results, key=lambda key: -mean(key))
    print(f"{'weights':36}{'rrf_k':>6}{'mean':>8}" + "".join(f"{n:>9}" for n in sets))
    today, alone = (FusionWeights(1, 1, 1), 5), (FusionWeights(1, 0, 0), 5)
    for key in [*ranked[:8], today, alone]:
        row = "".join(f"{results[key][n][0]:>9.3f}" for n in sets)
        print(f"{str(key[0]):36}{key[1]:>6}{mean(key):>8.3f}{row}")
    best = ranked[0]
    print(f"\nchosen: {best[0]} rrf_k={best[1]}")
    for label, other in (("equal weights, rrf_k=5 (before)", today), ("vector alone", alone)):
        for name in sets:
            diff, lo, hi = paired_interval(results[best][name][1], results[other][name][1])
            print(f"  {name:8} chosen - {label}: {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
