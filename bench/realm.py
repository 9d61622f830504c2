"""Held-out retrieval before and after training the retriever, side by side in one run.

An installed package (at least 500 files by default: networkx) is copied to a temporary directory
and ingested with the real encoder. Its documented functions give the questions (CodeSearchNet
construction: the docstring's first sentence asks for the function, indexed without its docstring),
split into train and held-out by file. Then, in the same process:

- the lexical mode (BM25 in Postgres over bm25s tokens plus identifier parts, plus trigrams);
- the frozen encoder (vector mode) and the service's hybrid fusion over it;
- the trained retriever: `train_retriever` (fine-tuning on the train split, optional REALM
  pre-training first) builds a candidate index version and measures it in vector and hybrid mode.

All figures are on the held-out split, the same questions for every row.

    python bench/realm.py --package networkx --finetune-steps 300 --json realm.json
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--towers", choices=["query", "both"], default="query")
    parser.add_argument("--pretrain-steps", type=int, default=0)
    parser.add_argument("--refresh-every", type=int, default=100)
    parser.add_argument("--device")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    with package_home(args.package, args.home, prefix="realm-bench-") as (home, source):
        from grounding.config import get_settings
        from grounding.eval_index import run_eval
        from grounding.ingest import ingest
        from grounding.models.realm import RealmConfig
        from grounding.training.finetune import FinetuneConfig
        from grounding.training.pipeline import train_retriever
        from grounding.training.pretrain import PretrainConfig

        files = sum(1 for p in source.rglob("*") if p.is_file())
        figures: dict = {"package": args.package, "files": files, "encoder": get_settings().encoder, "seconds": {}}
        t = time.perf_counter()
        report = ingest(str(source), name=args.package)
        figures["seconds"]["ingest"] = time.perf_counter() - t
        figures["chunks"] = report.chunks_added + report.chunks_unchanged
        print(f"{args.package}: {files} files, {figures['chunks']} chunks, ingest {figures['seconds']['ingest']:.0f}s")

        t = time.perf_counter()
        frozen = run_eval(args.package, modes=("lexical", "vector", "hybrid"), k=K)
        figures["seconds"]["eval_index_and_frozen_eval"] = time.perf_counter() - t
        rows = {f"frozen {r.mode}": r.metrics for r in frozen.results}
        rows["full-text (lexical)"] = rows.pop("frozen lexical")
        train_n = sum(1 for q in frozen.eval_index.questions if q.effective_split == "train")
        figures["questions"] = {"train": train_n, "heldout": frozen.results[0].questions}
        print(f"questions: {train_n} train, {frozen.results[0].questions} held-out")

        pretrain = None
        if args.pretrain_steps:
            pretrain = PretrainConfig(
                steps=args.pretrain_steps, refresh_every=args.refresh_every, adaptive_refresh=True, first_refresh=25
            )
        t = time.perf_counter()
        trained = train_retriever(
            args.package,
            realm=RealmConfig(encoder=get_settings().encoder),
            pretrain_config=pretrain,
            finetune_config=FinetuneConfig(
                steps=args.finetune_steps, batch_size=args.batch_size, lr=args.lr, towers=args.towers
            ),
            margin=0.0,
            device=args.device,
        )
        figures["seconds"]["train_and_gate"] = time.perf_counter() - t
        held = trained.metrics["heldout"]
        rows["trained vector"] = held["candidate_vector"]
        rows["trained hybrid"] = held["candidate_hybrid"]
        figures["rows"] = rows
        figures["training"] = {k: v for k, v in trained.metrics.items() if k != "heldout"}
        figures["decision"] = trained.decision.reason
        mrr = f"mrr@{K}"
        figures["ratios"] = {
            "trained/frozen vector MRR": rows["trained vector"][mrr] / rows["frozen vector"][mrr],
            "trained/frozen hybrid MRR": rows["trained hybrid"][mrr] / rows["frozen hybrid"][mrr],
            "trained vector/full-text MRR": rows["trained vector"][mrr] / rows["full-text (lexical)"][mrr],
        }

        print(f"\nheld-out retrieval, {figures['questions']['heldout']} questions ({args.package}):")
        metrics = list(rows["frozen vector"])
        print(f"{'retriever':22}" + "".join(f"{m:>11}" for m in metrics))
        for name in ("full-text (lexical)", "frozen vector", "frozen hybrid", "trained vector", "trained hybrid"):
            print(f"{name:22}" + "".join(f"{rows[name][m]:>11.3f}" for m in metrics))
        for name, value in figures["ratios"].items():
            print(f"{name}: {value:.3f}")
        tr = figures["training"]
        print(
            f"\nfine-tuning: {tr['finetune_steps']} steps on {tr['finetune_pairs']} pairs, "
            f"{tr['finetune_seconds']:.0f}s, loss {tr['finetune_first_loss']:.3f} -> {tr['finetune_last_loss']:.3f}"
        )
        if pretrain:
            print(
                f"pre-training: {tr['pretrain_steps']} steps, {tr['refreshes']} index refreshes "
                f"({tr['refresh_seconds']:.0f}s), "
                f"loss {tr['pretrain_first_loss']:.3f} -> {tr['pretrain_last_loss']:.3f}"
            )
        print(f"gate: {figures['decision']}")
        print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in figures["seconds"].items()))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
