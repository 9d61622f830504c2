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
import collections
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fusion import candidates_of, dev_candidates, reciprocal_ranks  # noqa: E402
from quality import paired_interval  # noqa: E402

FACTORS = (1.0, 0.75, 0.5, 0.3, 0.15)


def class_owners(repo: str) -> set[tuple[str, str]]:
    """(path, symbol) of every definition of `repo` that owns a method chunk: a class, an interface, a struct."""
    import sqlalchemy as sa

    from grounding import db, store

    with db.get_engine().connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.path, c.symbol FROM chunks c JOIN files f ON f.id = c.file_id "
                "WHERE c.repo_id = :r AND c.kind = 'method' AND c.symbol LIKE '%.%'"
            ),
            {"r": store.repo_id(conn, repo)},
        ).all()
    owners = set()
    for path, symbol in rows:
        parts = symbol.split(".")
        owners.update((path, ".".join(parts[:i])) for i in range(1, len(parts)))
    return owners


def kind_candidates(repo: str, questions):
    """fusion.candidates_of, each candidate described as (role favoured, kind class)."""
    owners = class_owners(repo)

    def kind_class(c) -> str:
        if c.kind in ("block", "lines"):
            return "block"
        if c.kind == "fragment" and (c.path, c.symbol) in owners:
            return "body"
        return "definition"

    return candidates_of(repo, questions, describe=lambda hit, favoured: (favoured, kind_class(hit.citation)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the GROUNDING_HOME bench/quality.py ingested the sets into")
    parser.add_argument("--sets", default="cosqa,click,gin,express,click-lines,gin-lines,express-lines")
    args = parser.parse_args(argv)
    sets = dev_candidates(args.home, args.sets, candidates=kind_candidates)
    from grounding.config import get_settings
    from grounding.search.fusion import DEFAULT_WEIGHTS, FusionWeights

    settings = get_settings()
    weights, rrf_k, role_prior = FusionWeights.parse(DEFAULT_WEIGHTS), settings.rrf_k, settings.role_prior
    for name, (cands, _) in sets.items():
        counts = collections.Counter(kc for found in cands for *_, (_, kc) in found)
        print(f"{name}: candidates by kind {dict(counts)}")

    def factor(block, body):
        by_kind = {"block": block, "body": body, "definition": 1.0}
        return lambda d: (1.0 if d[0] else role_prior) * by_kind[d[1]]

    results = {
        (block, body): {
            name: reciprocal_ranks(cands, qs, weights, rrf_k, factor=factor(block, body))
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
