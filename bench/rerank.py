"""Held-out retrieval with and without a cross-encoder reranker trained on the repository, and what it costs.

An installed package (networkx by default) is copied to a temporary directory and ingested with the
real encoder (a --home from bench/realm.py is reused, with whatever retriever it promoted). Then, in
the same process, `train_reranker` (the `train-reranker` job) harvests docstring questions, trains a
cross-encoder from the default encoder's body on the train split, and measures on the held-out split:

- hybrid search as served now (the baseline row),
- the same hybrid candidates reordered by the new cross-encoder (the `grounding eval --rerank` row),

and the gate's decision. Last, search latency over held-out questions without and with reranking
(the same k and candidates), as a ratio.

    python bench/rerank.py --package networkx --home /tmp/rb/networkx --json rerank.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import package_home  # noqa: E402  (bench/common.py)

K = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="networkx")
    parser.add_argument("--home", help="GROUNDING_HOME to use (and reuse across runs); default: a temp dir")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--max-tokens", type=int, default=192, help="question and passage together")
    parser.add_argument("--candidates", type=int, default=20, help="fused hits the reranker reorders")
    parser.add_argument("--latency-questions", type=int, default=50)
    parser.add_argument("--device")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "pgserver", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ["GROUNDING_RERANK_CANDIDATES"] = str(args.candidates)
    with package_home(args.package, args.home, prefix="rerank-bench-") as (home, source):
        from grounding.config import get_settings
        from grounding.evaluation.datasets import select_split
        from grounding.index.ingest import ingest
        from grounding.search.retrieve import search
        from grounding.training.reranker import RerankerConfig, train_reranker

        figures: dict = {"package": args.package, "encoder": get_settings().encoder, "candidates": args.candidates}
        t = time.perf_counter()
        report = ingest(str(source), name=args.package)
        figures["chunks"] = report.chunks_added + report.chunks_unchanged
        print(f"{args.package}: {figures['chunks']} chunks, ingest {time.perf_counter() - t:.0f}s")

        t = time.perf_counter()
        config = RerankerConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            group_size=args.group_size,
            lr=args.lr,
            max_tokens=args.max_tokens,
        )
        trained = train_reranker(args.package, config=config, margin=0.0, k=K, device=args.device)
        figures["train_and_gate_seconds"] = time.perf_counter() - t
        m = trained.metrics
        figures["training"] = {k: v for k, v in m.items() if k != "heldout"}
        figures["rows"] = rows = m["heldout"]
        figures["decision"] = trained.decision.reason
        figures["checkpoint"] = trained.checkpoint
        mrr = f"mrr@{K}"
        figures["ratio"] = rows["hybrid+candidate"][mrr] / rows[m["baseline"]][mrr]

        print(
            f"\nheld-out retrieval, {m['eval_questions_heldout']} questions ({args.package}); "
            f"the reranker reorders the first {args.candidates} fused hits:"
        )
        metrics = list(rows["hybrid"])
        print(f"{'':26}" + "".join(f"{x:>11}" for x in metrics))
        for name, label in (("hybrid", "hybrid"), ("hybrid+current", "hybrid + promoted before")):
            if name in rows:
                print(f"{label:26}" + "".join(f"{rows[name][x]:>11.3f}" for x in metrics))
        print(f"{'hybrid + new reranker':26}" + "".join(f"{rows['hybrid+candidate'][x]:>11.3f}" for x in metrics))
        print(f"reranked/{m['baseline']} MRR: {figures['ratio']:.3f}")
        print(
            f"training: {m['reranker_train_questions']} questions with a right and a wrong candidate "
            f"(answer among the candidates for {m['train_answer_in_candidates']:.0%}), "
            f"{m['reranker_steps']} steps in {m['reranker_seconds']:.0f}s, "
            f"loss {m['reranker_first_loss']:.3f} -> {m['reranker_last_loss']:.3f}; validation MRR "
            f"fused {m['reranker_val_mrr_fused'] or 0:.3f} -> reranked {m['reranker_val_mrr_best'] or 0:.3f} "
            f"(best step {m['reranker_best_step']}, prior weight {m['reranker_prior_weight']})"
        )
        print(f"gate: {figures['decision']}")

        from grounding.evaluation.eval_index import build_eval_index

        index = build_eval_index(args.package)
        questions = [q.question for q in select_split(index.questions, "heldout")][: args.latency_questions]
        timings: dict[str, list[float]] = {"search": [], "search+rerank": []}
        search(index.name, questions[0], k=5, rerank=trained.checkpoint)  # load the model once, outside the timing
        for q in questions:
            for name, rerank in (("search", False), ("search+rerank", trained.checkpoint)):
                t = time.perf_counter()
                search(index.name, q, k=5, rerank=rerank)
                timings[name].append((time.perf_counter() - t) * 1000)
        figures["latency_ms"] = {
            name: {"p50": statistics.median(v), "p90": statistics.quantiles(v, n=10)[-1]} for name, v in timings.items()
        }
        lat = figures["latency_ms"]
        print(
            f"\nsearch latency, {len(questions)} held-out questions, k=5: "
            f"p50 {lat['search']['p50']:.1f} ms without, {lat['search+rerank']['p50']:.1f} ms with the reranker "
            f"(x{lat['search+rerank']['p50'] / lat['search']['p50']:.1f}); "
            f"p90 {lat['search']['p90']:.1f} / {lat['search+rerank']['p90']:.1f} ms"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
