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

`--package cosqa` trains on CoSQA's corpus instead (../shared/benchmarks/cosqa: its functions' own
docstrings and names, never its query labels) and measures what the issue asks: dev-500 MRR@10 of the
frozen encoder and of the trained query tower, vector and hybrid, with paired bootstrap 95% intervals,
beside the gate's own decision on the held-out docstring questions.

    python bench/realm.py --package networkx --finetune-steps 300 --json realm.json
    python bench/realm.py --package cosqa --finetune-steps 200 --batch-size 64 --home /tmp/cosqa-home
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
DEV_SETS = ("cosqa", "click", "gin", "express")  # real queries: CoSQA's web queries, or real commit subjects


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
    parser.add_argument("--pretrain-batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=8, help="documents marginalised over in pre-training")
    parser.add_argument("--max-doc-tokens", type=int, help="default: what the frozen index reads (256)")
    parser.add_argument("--reader-warmup-steps", type=int, default=100, help="reader alone before REALM's steps")
    parser.add_argument("--reader-lr", type=float, help="the reader's learning rate; default: PretrainConfig's")
    parser.add_argument("--device")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--negatives", choices=["corpus", "hard"], default="corpus")
    parser.add_argument("--no-name-pairs", action="store_true", help="train on harvested docstrings alone")
    args = parser.parse_args()
    if args.package in DEV_SETS:
        return dev_set(args)

    with package_home(args.package, args.home, prefix="realm-bench-") as (home, source):
        from grounding.config import get_settings
        from grounding.evaluation.eval_index import run_eval
        from grounding.index.ingest import ingest
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
                steps=args.pretrain_steps,
                refresh_every=args.refresh_every,
                adaptive_refresh=True,
                first_refresh=25,
                reader_warmup_steps=args.reader_warmup_steps,
                **({"reader_lr": args.reader_lr} if args.reader_lr else {}),
                batch_size=args.pretrain_batch_size,
            )
        doc_tokens = {"max_doc_tokens": args.max_doc_tokens} if args.max_doc_tokens else {}
        t = time.perf_counter()
        trained = train_retriever(
            args.package,
            realm=RealmConfig(encoder=get_settings().encoder, top_k=args.top_k, **doc_tokens),
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
            print(throughput(trained.run_id, tr, device=args.device))
        print(f"gate: {figures['decision']}")
        print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in figures["seconds"].items()))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


def throughput(run_id: int, summary: dict, *, device: str | None) -> str:
    """REALM pre-training's steps/s, reader tokens/s, MFU (CUDA), peak memory, and whether reading helped:
    the reader warm-up's utility log p(y|z*,x) - log p(y|null,x) first and last, and the utility of the
    retrieved documents (best of the top k over the null one) at the first and last logged steps."""
    import resource

    import torch

    from grounding.training.retro_train import H100_BF16_FLOPS
    from grounding.training.runs import training_metrics

    steps = [s["metrics"] for s in training_metrics(run_id, stage="pretrain")]
    seconds = summary.get("pretrain_seconds") or 0.0
    cuda = (device or "").startswith("cuda") and torch.cuda.is_available()
    tokens_per_s = summary.get("reader_tokens_per_s", 0.0)
    # Each reader token costs about 6 x parameters FLOPs (forward and backward) in the reader and 6 x in the
    # towers for the query and document tokens; the reader's count is the floor of what ran.
    flops = 6 * summary.get("reader_parameters", 0) * tokens_per_s
    mfu = f", MFU {flops / H100_BF16_FLOPS:.1%} of an H100 (reader only)" if cuda else ""
    peak = (
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU"
        if cuda
        else f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS"
    )
    first, last = (steps[0].get("utility"), steps[-1].get("utility")) if steps else (None, None)
    rose = "rose" if first is not None and last is not None and last > first else "did not rise"
    return (
        f"pre-training throughput: {summary['pretrain_steps'] / max(seconds, 1e-9):.2f} steps/s, "
        f"{tokens_per_s:,.0f} reader tokens/s{mfu}, peak {peak}\n"
        f"reader warm-up: {summary.get('reader_warmup_steps')} steps, utility of the defining chunk "
        f"{_nats(summary.get('reader_utility_first'))} -> {_nats(summary.get('reader_utility_last'))} nats "
        f"({'reached' if summary.get('reader_can_read') else 'did not reach'} the target)\n"
        f"utility of retrieved documents over the null one: {_nats(first)} -> {_nats(last)} nats ({rose})"
    )


def _nats(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def dev_set(args) -> int:
    """Train on a corpus's own text; its real questions (CoSQA dev-500, or a history's commit subjects) with
    the frozen encoder and with the trained query tower, vector and hybrid, with intervals."""
    import os
    import tempfile

    import quality  # bench/quality.py: the CoSQA tree, the file-level scoring, the intervals

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(args.home or tempfile.mkdtemp(prefix="realm-cosqa-"))
    os.environ["GROUNDING_HOME"] = str(home)
    from grounding import db, store
    from grounding.config import get_settings, reset_settings

    reset_settings()
    from grounding.index.ingest import ingest
    from grounding.index.reindex import reindex
    from grounding.models.realm import RealmConfig
    from grounding.training.checkpoint import encoder_name
    from grounding.training.finetune import FinetuneConfig
    from grounding.training.pipeline import train_retriever

    t = time.perf_counter()
    if args.package == "cosqa":
        root, questions = quality.cosqa_set(home / "src")
        ingest(str(root), name="cosqa")
        trained_repo = searched = "cosqa"
        what = "CoSQA dev-500"
    else:  # the history is ingested at its head and trained on; its commit subjects are searched before them
        trained_repo = args.package
        searched, _, questions = quality.commits_set(args.package, home / "src")
        what = f"{args.package} commit subjects"
    print(f"{args.package}: ingested in {time.perf_counter() - t:.0f}s; {len(questions)} questions ({what})")
    with db.get_engine().connect() as conn:
        frozen = store.active_index_version(conn, store.repo_id(conn, searched))

    def ranker(mode: str, version: int):
        return quality.grounding_ranker(searched, mode, index_version=version)

    rows = {}
    for mode in ("lexical", "vector", "hybrid"):
        rows[f"frozen {mode}"] = quality.reciprocal_ranks(ranker(mode, frozen.id), questions)
    t = time.perf_counter()
    report = train_retriever(
        trained_repo,
        realm=RealmConfig(encoder=get_settings().encoder),
        finetune_config=FinetuneConfig(
            steps=args.finetune_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            negatives=args.negatives,
            name_pairs=not args.no_name_pairs,
        ),
        margin=0.0,
        device=args.device,
        warm_start=False,
    )
    seconds = time.perf_counter() - t
    trained = report.promoted_version if searched == trained_repo else None
    if trained is None:  # refused, or another index searched: the towers in a candidate version of what is searched
        trained = reindex(
            searched,
            encoder=frozen.encoder,
            query_encoder=encoder_name(report.checkpoint, "query"),
            activate=False,
            copy_from=frozen.id,
            grace_seconds=0,
        ).version
    for mode in ("vector", "hybrid"):
        rows[f"trained {mode}"] = quality.reciprocal_ranks(ranker(mode, trained), questions)
    tr = report.metrics
    print(
        f"\ntraining (train_retriever, {args.finetune_steps} steps of {args.batch_size}, negatives={args.negatives}): "
        f"{tr['finetune_question_pairs']} docstring pairs + {tr['finetune_name_pairs']} name pairs, "
        f"{seconds:.0f}s in all ({tr['finetune_seconds']:.0f}s fine-tuning), best step {tr['finetune_best_step']}"
    )
    print(f"gate (held-out docstring questions, hybrid): {report.decision.reason}")
    print(f"\n{what}, file level ({len(questions)} questions):")
    print(f"{'row':16}{'R@1':>8}{'R@5':>8}{'MRR@10':>8}   MRR@10 difference [95%]")
    figures = {"seconds": seconds, "gate": report.decision.to_dict(), "rows": {}}
    for name, (rr, ranks) in rows.items():
        m = quality.metrics(ranks)
        base = rows["frozen " + name.split()[1]] if name.startswith("trained") else None
        diff = ""
        if base is not None:
            d, lo, hi = quality.paired_interval(rr, base[0])
            diff = f"   {d:+.3f} [{lo:+.3f}, {hi:+.3f}] vs frozen {name.split()[1]}"
            m["gain"] = [d, lo, hi]
        figures["rows"][name] = m
        print(f"{name:16}{m['recall@1']:>8.3f}{m['recall@5']:>8.3f}{m['mrr@10']:>8.3f}{diff}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    db.reset()
    db.stop_embedded()
    return 0


if __name__ == "__main__":
    sys.exit(main())
