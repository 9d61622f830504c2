"""Choose the chunk-kind prior on public dev data, with paired intervals.

A natural-language question about behaviour is answered by a definition (a function, a method, a part
of one); a module's top-level block (imports, a module docstring, a Java `module-info`) or the part of
a class body outside its methods (fields, an interface's javadoc) shares its words without doing it.
This script measures whether multiplying those chunks' fused scores by a factor helps, as the role
prior does for tests and docs:

- `block`: a chunk outside every definition (kind `block`, or `lines` for a file without a grammar);
- `body`: a `fragment` of a class (a fragment whose symbol owns a method chunk of its file), not of a
  split function.

Sets (bench/quality.py's dev sets): CoSQA dev-500, the commit sets of click, gin and express at file
level, and the same commits at line level (`-lines`: a hit counts when it overlaps the lines the commit
changed). Each question's candidates are fetched once (tuning.candidate_hits) and fused offline with the
serving defaults (weights, rrf_k, role prior); the grid's entries are compared with no kind prior (1, 1).
Reuse the home bench/quality.py ingested the sets into:

    python bench/kind_prior.py --home /tmp/qhome --sets cosqa,click,gin,express,click-lines,gin-lines,express-lines
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import K, by_file, dev_set, log, matches, paired_interval  # noqa: E402

FACTORS = (1.0, 0.75, 0.5, 0.3, 0.15)


def class_owners(repo_id: int) -> set[tuple[str, str]]:
    """(path, symbol) of every definition of `repo_id` that owns a method chunk: a class, an interface, a struct."""
    import sqlalchemy as sa

    from grounding import db

    with db.get_engine().connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.path, c.symbol FROM chunks c JOIN files f ON f.id = c.file_id "
                "WHERE c.repo_id = :r AND c.kind = 'method' AND c.symbol LIKE '%.%'"
            ),
            {"r": repo_id},
        ).all()
    owners = set()
    for path, symbol in rows:
        parts = symbol.split(".")
        owners.update((path, ".".join(parts[:i])) for i in range(1, len(parts)))
    return owners


def candidates_of(repo: str, questions):
    """Per question: (span, {ranker: rank}, role favoured, kind class) of every candidate."""
    from grounding import db, store
    from grounding.evaluation.tuning import candidate_hits
    from grounding.roles import asked_roles

    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        version = store.active_index_version(conn, repo_id)
    owners = class_owners(repo_id)

    def kind_class(c) -> str:
        if c.kind in ("block", "lines"):
            return "block"
        if c.kind == "fragment" and (c.path, c.symbol) in owners:
            return "body"
        return "definition"

    out = []
    for (query, _), hits in zip(questions, candidate_hits(repo_id, version, [q for q, _ in questions])):
        favoured = {"source", *asked_roles(query)}
        out.append(
            [
                (
                    (h.citation.path, h.citation.start_line, h.citation.end_line),
                    {"vector": h.vector_rank, "lexical": h.lexical_rank, "trigram": h.trigram_rank},
                    h.citation.role in favoured,
                    kind_class(h.citation),
                )
                for h in hits
            ]
        )
    return out


def reciprocal_ranks(cands, questions, weights, rrf_k, role_prior, block, body) -> list[float]:
    from grounding.search.fusion import fuse

    kind_factor = {"block": block, "body": body, "definition": 1.0}
    rr = []
    for found, (_, gold) in zip(cands, questions):
        factors = {span: (1.0 if fav else role_prior) * kind_factor[kc] for span, _, fav, kc in found}
        ranked = fuse([(span, ranks) for span, ranks, _, _ in found], weights, rrf_k=rrf_k, factors=factors)
        if all(isinstance(g, str) for g in gold):
            ranked = by_file(ranked)
        rank = next((i for i, hit in enumerate(ranked[:K], 1) if matches(hit, gold)), 0)
        rr.append(1 / rank if rank else 0.0)
    return rr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the GROUNDING_HOME bench/quality.py ingested the sets into")
    parser.add_argument("--sets", default="cosqa,click,gin,express,click-lines,gin-lines,express-lines")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["GROUNDING_HOME"] = args.home
    from grounding import db
    from grounding.config import get_settings, reset_settings
    from grounding.search.fusion import DEFAULT_WEIGHTS, FusionWeights

    reset_settings()
    settings = get_settings()
    weights, rrf_k, role_prior = FusionWeights.parse(DEFAULT_WEIGHTS), settings.rrf_k, settings.role_prior
    sets = {}
    try:
        for name in args.sets.split(","):
            repo, questions = dev_set(name, Path(args.home) / "sets")
            t = time.perf_counter()
            sets[name] = (candidates_of(repo, questions), questions)
            counts = {}
            for found in sets[name][0]:
                for *_, kc in found:
                    counts[kc] = counts.get(kc, 0) + 1
            log(f"{name}: candidates of {len(questions)} questions in {time.perf_counter() - t:.0f}s, kinds {counts}")
    finally:
        db.reset()
        db.stop_embedded()

    results = {
        (block, body): {
            name: reciprocal_ranks(cands, qs, weights, rrf_k, role_prior, block, body)
            for name, (cands, qs) in sets.items()
        }
        for block, body in itertools.product(FACTORS, FACTORS)
    }

    def mean(key) -> float:
        return sum(sum(rr) / len(rr) for rr in results[key].values()) / len(sets)

    print(f"serving defaults: {weights} rrf_k={rrf_k} role_prior={role_prior}")
    print(f"{'block':>6}{'body':>6}{'mean':>8}" + "".join(f"{n:>15}" for n in sets))
    for key in sorted(results, key=lambda k: -mean(k)):
        row = "".join(f"{sum(rr) / len(rr):>15.3f}" for rr in results[key].values())
        print(f"{key[0]:>6}{key[1]:>6}{mean(key):>8.3f}{row}")
    best = max(results, key=mean)
    print(f"\nbest: block={best[0]} body={best[1]}; against no kind prior (1, 1):")
    for name in sets:
        diff, lo, hi = paired_interval(results[best][name], results[(1.0, 1.0)][name])
        print(f"  {name:15} {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
