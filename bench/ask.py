"""End-to-end `ask` latency (extractive answers) over one repository of at least 100,000 chunks, and what the
reranker adds to retrieval quality.

Part 1 reuses bench/query.py's corpus (site-packages trees in one repository, HashingEmbedder(384)
vectors, see its docstring) and times `grounding.ask` end to end: access check, hybrid search with
merging and fragment expansion, prompt packing, the extractive answer with numbered citations. The
real encoder's single-question time is measured beside it and added, as a MiniLM index would pay it.
Raw `search` is timed on the same questions, in turns, so the cost of everything `ask` adds is a
ratio in the same process.

With --reranker DIR (a cross-encoder directory, e.g. the checkpoint `grounding train-reranker` or
bench/rerank.py wrote), `ask` is timed again on the first --rerank-questions with the reranker
reordering the first GROUNDING_RERANK_CANDIDATES fused hits, and part 2 runs `grounding eval` on the
held-out docstring questions of --eval-package (ingested into --eval-home, which may be the home
bench/rerank.py trained in) without and with it, side by side. Held-out only: a reranker trained by
train-reranker has seen the train split.

    python bench/ask.py --reuse-home /tmp/query-home --json ask.json
    python bench/ask.py --reuse-home /tmp/query-home --reranker /tmp/rb/networkx/runs/7/reranker \
        --eval-home /tmp/rb/networkx --eval-package networkx
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import query  # noqa: E402  (bench/query.py: the corpus builder and timing helpers)
from common import corpus_home  # noqa: E402

SITE_PACKAGES = query.SITE_PACKAGES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-chunks", type=int, default=100_000)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--reuse-home", type=Path, help="a GROUNDING_HOME to build into once and reuse (see query.py)")
    parser.add_argument("--reranker", help="a local cross-encoder directory: ask timed with it, and part 2")
    parser.add_argument("--rerank-questions", type=int, default=50)
    parser.add_argument("--eval-package", default="requests")
    parser.add_argument("--eval-home", type=Path, help="GROUNDING_HOME for part 2 (default: the one of part 1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    home = corpus_home(args.reuse_home, prefix="grounding-ask-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from grounding import config, db, store

    config.reset_settings()
    db.reset()
    built = query.build(home, args.min_chunks)
    with db.get_engine().begin() as conn:
        chunks = next((r.chunks for r in store.list_repos(conn) if r.name == query.REPO), None)
    questions = query.harvest_questions(
        home / "corpus", docstrings=args.questions * 4 // 5, identifiers=args.questions // 5, seed=0
    )

    import grounding
    from grounding.search.retrieve import search

    for q in questions[: query.WARMUP]:
        grounding.ask(query.REPO, q, k=args.k, backend="extractive")
    load = [os.getloadavg()[0]]
    seconds: dict[str, list[float]] = {"ask (extractive)": [], "search only": []}
    for i, q in enumerate(questions):  # alternate which goes first, so a load spike hits both alike
        pair = [("ask (extractive)", grounding.ask, {"backend": "extractive"}), ("search only", search, {})]
        for name, fn, extra in pair[i % 2 :] + pair[: i % 2]:
            seconds[name].append(query.elapsed(fn, query.REPO, q, k=args.k, **extra))
    seconds[query.ENCODE] = query.time_encoder(questions)
    load.append(os.getloadavg()[0])
    figures = {name: query.summary(s) for name, s in seconds.items()}
    query.print_table(
        figures,
        f"latency in ms over {len(questions)} questions, k={args.k}, {chunks} chunks, "
        f"{os.cpu_count()} cores, 1-min load {load[0]:.1f} -> {load[1]:.1f}",
    )
    ask50, enc50 = figures["ask (extractive)"]["p50"], figures[query.ENCODE]["p50"]
    print(
        f"ask / search p50: {ask50 / figures['search only']['p50']:.2f}; "
        f"ask p50 with a MiniLM question encoding: {ask50 + enc50:.1f} ms"
    )
    out = {"chunks": chunks, "build": built, "load_avg_1m": load, "latency_ms": figures}
    if args.reranker:
        out["latency_ms"]["ask (extractive) + rerank"] = time_reranked_ask(args, questions[: args.rerank_questions])

    out["rerank"] = eval_with_reranker(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    db.reset()
    db.stop_embedded()
    return 0


def time_reranked_ask(args, questions: list[str]) -> dict:
    """`ask` with the reranker, on the same corpus and questions as part 1's rows."""
    import grounding
    from grounding.config import reset_settings

    os.environ["GROUNDING_RERANKER"] = args.reranker
    reset_settings()
    grounding.ask(query.REPO, questions[0], k=args.k, backend="extractive")  # load the model outside the timing
    seconds = [query.elapsed(grounding.ask, query.REPO, q, k=args.k, backend="extractive") for q in questions]
    figures = query.summary(seconds)
    print(
        f"ask (extractive) with the reranker over the first {len(questions)} questions: "
        f"p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms "
        f"({os.environ.get('GROUNDING_RERANK_CANDIDATES', 'default')} candidates)"
    )
    return figures


def eval_with_reranker(args) -> dict | None:
    if not args.reranker:
        print(
            "\nreranker: none given (--reranker DIR); train one with `grounding train-reranker REPO` or "
            "bench/rerank.py, so the with/without comparison was not run"
        )
        return None
    from grounding import db
    from grounding.config import reset_settings
    from grounding.evaluation.eval_index import run_eval
    from grounding.index.ingest import ingest

    if args.eval_home:
        db.reset()
        db.stop_embedded()
        os.environ["GROUNDING_HOME"] = str(args.eval_home.resolve())
    os.environ["GROUNDING_RERANKER"] = args.reranker
    reset_settings()
    home = Path(os.environ["GROUNDING_HOME"])
    candidates = (home / "src" / args.eval_package, home / "eval-src" / args.eval_package)  # bench/realm.py's, ours
    source = next((p for p in candidates if p.is_dir()), None)
    if source is None:
        source = candidates[1]
        shutil.copytree(SITE_PACKAGES / args.eval_package, source, ignore=shutil.ignore_patterns("__pycache__"))
    ingest(str(source), name=args.eval_package)
    report = run_eval(args.eval_package, modes=("hybrid",), split="heldout", rerank=True)
    rows = {r.mode: r.metrics for r in report.results}
    print(
        f"\n{args.eval_package}: {report.results[0].questions} held-out docstring questions, "
        "without and with the reranker"
    )
    for mode, metrics in rows.items():
        print(f"{mode:16}" + "".join(f"{k} {v:.3f}  " for k, v in metrics.items()))
    return rows


if __name__ == "__main__":
    sys.exit(main())
