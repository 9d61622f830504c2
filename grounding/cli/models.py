"""Subcommands that measure and train: eval, tune-fusion, train (REALM), train-reranker, runs, train-retro, complete."""

from __future__ import annotations

import argparse


def _cmd_eval(args: argparse.Namespace) -> int:
    from grounding.evaluation.eval_index import run_eval
    from grounding.evaluation.metrics import MODES

    modes = MODES if args.mode == "all" else (args.mode,)
    report = run_eval(
        args.repo,
        dataset=args.dataset,
        harvester=args.harvest,
        split=args.split,
        modes=modes,
        k=args.k,
        save=args.save,
        rerank=args.rerank,
    )
    if report.eval_index is not None:
        r = report.eval_index.ingest
        print(
            f"{report.repo}: {report.total} questions harvested ({report.dataset}), saved to {report.saved}; "
            f"eval index {report.searched}: {r.files_changed} files changed, {r.embeddings_computed} embedded"
        )
    first = report.results[0]
    print(
        f"{report.repo}: {first.questions} questions ({report.split} split of {report.total}) asked of "
        f"{report.searched}, index version {first.index_version or '-'} ({first.encoder or 'no encoder'})"
    )
    metrics = list(first.metrics)
    width = max(8, *(len(r.mode) + 1 for r in report.results))  # `hybrid+rerank` sits under `hybrid`
    print(f"{'mode':{width}}" + "".join(f"{m:>11}" for m in metrics) + f"{'run':>7}")
    for result, run_id in zip(report.results, report.run_ids):
        print(f"{result.mode:{width}}" + "".join(f"{result.metrics[m]:>11.3f}" for m in metrics) + f"{run_id:>7}")
    return 0


def _cmd_tune_fusion(args: argparse.Namespace) -> int:
    from grounding.evaluation.tuning import tune_fusion

    choice = tune_fusion(args.repo, harvester=args.harvest, max_questions=args.max_questions)
    print(choice.describe())
    if choice.stored and args.verbose_table:
        for weights, mrr in sorted(choice.table.items(), key=lambda item: -item[1]):
            print(f"  {weights:40} {mrr:.3f}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from grounding.config import get_settings
    from grounding.models.realm import RealmConfig
    from grounding.training.finetune import FinetuneConfig
    from grounding.training.pipeline import train_retriever
    from grounding.training.pretrain import PretrainConfig

    pretrain = None
    if args.pretrain_steps:
        pretrain = PretrainConfig(
            steps=args.pretrain_steps,
            batch_size=args.pretrain_batch_size,
            refresh_every=args.refresh_every,
            masking=args.masking,
            ict_steps=args.ict_steps,
        )
    report = train_retriever(
        args.repo,
        harvester=args.harvest,
        realm=RealmConfig(encoder=args.encoder or get_settings().encoder, top_k=args.top_k),
        pretrain_config=pretrain,
        finetune_config=FinetuneConfig(steps=args.finetune_steps, towers=args.towers, batch_size=args.batch_size),
        margin=args.margin,
        device=args.device,
    )
    verdict = "promoted" if report.decision.promoted else "retired"
    print(f"{report.repo}: training run {report.run_id}, checkpoint {report.checkpoint}")
    for name, metrics in report.metrics.get("heldout", {}).items():
        print(f"  {name:18}" + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(f"candidate version {report.candidate_version} {verdict}: {report.decision.reason}")
    if report.promoted_version:
        print(f"{report.repo} now serves index version {report.promoted_version}")
    return 0


def _cmd_train_reranker(args: argparse.Namespace) -> int:
    from grounding.training.reranker import RerankerConfig, train_reranker

    config = RerankerConfig(
        base=args.base, steps=args.steps, batch_size=args.batch_size, group_size=args.group_size, lr=args.lr
    )
    report = train_reranker(args.repo, harvester=args.harvest, config=config, margin=args.margin, device=args.device)
    m = report.metrics
    print(f"{report.repo}: reranker run {report.run_id}, checkpoint {report.checkpoint}")
    print(
        f"  {m['reranker_train_questions']} training questions, {m['reranker_validation_questions']} validation; "
        f"best step {m['reranker_best_step']} of {m['reranker_steps']}; "
        f"answer among the candidates for {m['train_answer_in_candidates']:.0%} of train questions"
    )
    for name, metrics in m["heldout"].items():
        print(f"  {name:18}" + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    verdict = "promoted" if report.decision.promoted else "retired"
    print(f"{verdict}: {report.decision.reason}")
    if report.decision.promoted:
        print(f"searches of {report.repo} now rerank with it (GROUNDING_RERANKER=promoted, the default)")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from grounding.training.runs import mark_dead_runs, training_runs

    mark_dead_runs()  # a killed run would otherwise read `running` for ever
    for run in training_runs(args.repo, limit=args.limit):
        held = run.metrics.get("heldout", {})
        mrr = {k: v.get("mrr@10") for k, v in held.items()}
        figures = ", ".join(f"{k} {v:.3f}" for k, v in mrr.items() if v is not None)
        print(
            f"{run.id:>4}  {run.repo}  {run.kind}  {run.status}  {run.decision or '-'}  "
            f"{run.started_at:%Y-%m-%d %H:%M}  {figures or run.error or ''}"
        )
        if run.reason:
            print(f"      {run.reason}")
    return 0


def _cmd_train_retro(args: argparse.Namespace) -> int:
    from grounding.index.retro_db import RetroDbConfig
    from grounding.training.retro_train import RetroTrainConfig, train_retro, train_retrofit

    train_config = RetroTrainConfig(
        steps=args.steps, batch_size=args.batch_size, chunks_per_sequence=args.chunks_per_sequence
    )
    db_config = RetroDbConfig(chunk_tokens=args.chunk_tokens, neighbours=args.neighbours, retriever=args.retriever)
    if args.retrofit:
        report = train_retrofit(
            args.repo, args.retrofit, train_config=train_config, db_config=db_config, device=args.device
        )
    else:
        report = train_retro(
            args.repo, train_config=train_config, db_config=db_config, tokenizer_path=args.tokenizer, device=args.device
        )
    print(f"{report.repo}: RETRO run {report.run_id}, checkpoint {report.checkpoint}, database {report.database}")
    for name, value in report.bits_per_byte.items():
        print(f"  {name:34} {value:.4f} bits/byte")
    t = report.metrics["retrofit_train" if args.retrofit else "retro_train"]
    print(f"  training: {t['tokens_per_s']:.0f} tokens/s, loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}")
    return 0


def _cmd_complete(args: argparse.Namespace) -> int:
    from grounding.answer.completion import complete, prefix_at
    from grounding.errors import InvalidArgument

    path, line = args.location.rsplit(":", 1) if ":" in args.location else (args.location, None)
    if line is not None and not (line.isascii() and line.isdigit()):
        raise InvalidArgument(f"{args.location!r} is not PATH or PATH:LINE; LINE is a line number (1 is the first)")
    prefix = prefix_at(args.repo, path, int(line) if line else None, user=args.user)
    result = complete(
        args.repo, prefix, max_new_tokens=args.max_new_tokens, temperature=args.temperature, path=path, user=args.user
    )
    print(result.text)
    print(f"\n-- {result.tokens} tokens in {result.seconds:.2f}s ({result.tokens_per_s:.1f} tokens/s)")
    for i, c in enumerate(result.citations, 1):
        print(f"[{i}] {c.location}  (score {c.score:.3f})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure retrieval: recall@1/5/10 and MRR on harvested or given questions")
    p.add_argument("repo")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="a JSONL question file (question, path, start_line, end_line[, split])")
    source.add_argument(
        "--harvest",
        choices=["docstrings", "commits"],
        default="docstrings",
        help="harvest questions from the repository itself: docstrings (the default), or commits "
        "(commit subjects ask for the files they changed; needs git history)",
    )
    p.add_argument("--split", choices=["heldout", "train", "all"], help="default: heldout if harvested, else all")
    p.add_argument("--mode", choices=["hybrid", "vector", "lexical", "all"], default="hybrid")
    p.add_argument("-k", type=int, default=10, help="hits per question (default 10)")
    p.add_argument("--save", help="where to write harvested questions (default: GROUNDING_HOME/eval/REPO-HASH/)")
    p.add_argument(
        "--rerank",
        action="store_true",
        help="also evaluate with the repository's reranker (its promoted one, or GROUNDING_RERANKER's path); "
        "figures without and with it side by side",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "tune-fusion", help="choose the hybrid fusion weights of a repository's index version on its own questions"
    )
    p.add_argument("repo")
    p.add_argument("--harvest", choices=["docstrings", "commits"], default="docstrings", help="validation questions")
    p.add_argument("--max-questions", type=int, default=300, help="validation questions asked (default 300)")
    p.add_argument("--table", dest="verbose_table", action="store_true", help="print every grid entry's MRR@10")
    p.set_defaults(func=_cmd_tune_fusion)

    p = sub.add_parser("train", help="train a REALM retriever; promote it only if held-out MRR improves")
    p.add_argument("repo")
    p.add_argument("--harvest", choices=["docstrings", "commits"], default="docstrings", help="training questions")
    p.add_argument("--encoder", help="local encoder the towers start from (default: GROUNDING_ENCODER)")
    p.add_argument("--pretrain-steps", type=int, default=0, help="REALM pre-training steps (default 0: none)")
    p.add_argument("--pretrain-batch-size", type=int, default=8)
    p.add_argument("--refresh-every", type=int, default=500, help="MIPS index refresh interval (steps)")
    p.add_argument("--masking", choices=["salient", "random"], default="salient")
    p.add_argument("--ict-steps", type=int, default=0, help="Inverse Cloze Task warm-up steps")
    p.add_argument("--top-k", type=int, default=8, help="documents marginalised over in pre-training")
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16, help="fine-tuning questions per step")
    p.add_argument("--towers", choices=["query", "both"], default="query", help="query: fixed index (REALM)")
    p.add_argument(
        "--margin", type=float, default=0.0, help="the held-out MRR gain's 95%% lower bound must exceed this to promote"
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "train-reranker", help="train a cross-encoder reranker; promote it only if held-out MRR improves"
    )
    p.add_argument("repo")
    p.add_argument("--harvest", choices=["docstrings", "commits"], default="docstrings", help="training questions")
    p.add_argument("--base", help="local encoder the cross-encoder starts from (default: GROUNDING_ENCODER)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8, help="questions per step")
    p.add_argument("--group-size", type=int, default=4, help="one right and GROUP_SIZE - 1 wrong hits per question")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument(
        "--margin", type=float, default=0.0, help="the held-out MRR gain's 95%% lower bound must exceed this to promote"
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(func=_cmd_train_reranker)

    p = sub.add_parser("runs", help="list training runs: status, gate decision, held-out MRR")
    p.add_argument("repo", nargs="?")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("train-retro", help="train RETRO on a repository; held-out bits per byte with/without retrieval")
    p.add_argument("repo")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunks-per-sequence", type=int, default=16, help="sequence length in chunks of m tokens")
    p.add_argument("--chunk-tokens", type=int, default=64, help="m (default 64)")
    p.add_argument("--neighbours", type=int, default=2, help="k (default 2)")
    p.add_argument(
        "--retriever", choices=("dense", "bm25"), default="dense", help="how neighbours are found (default dense)"
    )
    p.add_argument("--tokenizer", help="a local tokenizer directory (default: one trained on the repository)")
    p.add_argument("--retrofit", metavar="BASE", help="RETRO-fit this local GPT-2/LLaMA causal LM instead (frozen)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available; the tiny model on cpu)")
    p.set_defaults(func=_cmd_train_retro)

    p = sub.add_parser("complete", help="complete code after FILE:LINE with the repository's RETRO model")
    p.add_argument("repo")
    p.add_argument("location", help="PATH:LINE in the repository: the prefix is the file up to that line")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--user", help="complete as this user: the repository must be granted to them")
    p.set_defaults(func=_cmd_complete)
