"""The `grounding` command: ingest, ask, repos, eval. Errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from grounding.errors import GroundingError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from grounding.ingest import ingest

    bar = None

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="file", desc="ingest", disable=args.quiet)
        bar.update(done - bar.n)

    report = ingest(args.source, name=args.name, ref=args.ref, progress=progress, wait=not args.no_wait)
    if bar is not None:
        bar.close()
    print(
        f"{report.repo}: snapshot {report.snapshot_id}"
        f"{' at ' + report.commit[:12] if report.commit else ''} — "
        f"{report.files_changed} files changed, {report.files_unchanged} unchanged, {report.files_deleted} deleted; "
        f"chunks +{report.chunks_added} -{report.chunks_removed} ={report.chunks_unchanged}; "
        f"{report.embeddings_computed} embedded, {report.embeddings_reused} reused"
    )
    if report.skipped:
        reasons = report.skipped_by_reason()
        print("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    if report.non_utf8:
        print(
            f"not UTF-8 (decoded with replacement): {', '.join(report.non_utf8[:10])}"
            + (" ..." if len(report.non_utf8) > 10 else "")
        )
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    print(f"time: {stages}")
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from grounding.ask import ask_stream
    from grounding.records import Answer

    repos = [args.repo, *(name for value in args.more_repos for name in value.split(",") if name)]
    answer = None
    for piece in ask_stream(repos, args.question, k=args.k, user=args.user, backend=args.backend):
        if isinstance(piece, Answer):
            answer = piece
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()  # the answer shows as it is written
    print()
    several = len(answer.repos) > 1
    for i, c in enumerate(answer.citations, 1):
        print(f"\n[{i}] {c.repo + ': ' if several else ''}{c.location}  (score {c.score:.4f})")
        if not args.no_code:
            width = len(str(c.end_line))
            for n, line in enumerate(c.snippet.split("\n"), c.start_line):
                print(f"  {n:>{width}} | {line}")
    return 0


def _cmd_repos(args: argparse.Namespace) -> int:
    from grounding import db, store

    with db.get_engine().connect() as conn:
        repos = store.list_repos(conn)
    if not repos:
        print("no repositories yet; run `grounding ingest PATH_OR_URL`")
        return 0
    print(f"{'name':20} {'snapshot':>8} {'commit':12} {'files':>6} {'chunks':>7} {'index':>5}  last run")
    for r in repos:
        last = r.last_status or "-"
        if r.last_status == "failed" and r.last_error:
            last += f": {r.last_error.splitlines()[0][:80]}"
        print(
            f"{r.name:20} {r.snapshot_id or '-':>8} {(r.commit or '-')[:12]:12} {r.files:>6} {r.chunks:>7} "
            f"{r.index_version or '-':>5}  {last}"
        )
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    from grounding.reindex import reindex

    r = reindex(args.repo, encoder=args.encoder, grace_seconds=args.grace_seconds, wait=not args.no_wait)
    print(
        f"{r.repo}: index version {r.previous_version or '-'} -> {r.version} ({r.encoder}), "
        f"{r.chunks} chunks, {r.embedded} encoded; collected {list(r.collected) or 'nothing'}"
    )
    return 0


def _cmd_refresh(args: argparse.Namespace) -> int:
    from grounding.refresh import refresh, repositories

    failed = 0
    for name in args.repos or repositories():
        try:
            outcome = refresh(name)
            print(f"{name}: {outcome.action} ({outcome.reason})")
        except GroundingError as err:
            failed += 1
            print(f"{name}: failed ({err})", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from grounding.eval_index import run_eval
    from grounding.evaluation import MODES

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


def _cmd_runs(args: argparse.Namespace) -> int:
    from grounding.training.runs import training_runs

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
    from grounding.retro_db import RetroDbConfig
    from grounding.training.retro_train import RetroTrainConfig, train_retro, train_retrofit

    train_config = RetroTrainConfig(
        steps=args.steps, batch_size=args.batch_size, chunks_per_sequence=args.chunks_per_sequence
    )
    db_config = RetroDbConfig(chunk_tokens=args.chunk_tokens, neighbours=args.neighbours)
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
    from grounding.completion import complete, prefix_at

    path, line = args.location.rsplit(":", 1) if ":" in args.location else (args.location, None)
    prefix = prefix_at(args.repo, path, int(line) if line else None, user=args.user)
    result = complete(
        args.repo, prefix, max_new_tokens=args.max_new_tokens, temperature=args.temperature, path=path, user=args.user
    )
    print(result.text)
    print(f"\n-- {result.tokens} tokens in {result.seconds:.2f}s ({result.tokens_per_s:.1f} tokens/s)")
    for i, c in enumerate(result.citations, 1):
        print(f"[{i}] {c.location}  (score {c.score:.3f})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from grounding.serve import serve

    def ready(api_url: str) -> None:
        print(
            f"grounding is serving. In another shell:\n  export PREFECT_API_URL={api_url}\n"
            "  prefect deployment run ingest-repo/default -p source=PATH_OR_URL\nCtrl-C stops it.",
            flush=True,
        )

    return serve(port=args.port, ready=ready)


def _cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    import time
    import urllib.error
    import urllib.request
    import webbrowser

    from grounding.config import get_settings
    from grounding.serve import PROJECT_DIR

    app = PROJECT_DIR / "app" / "copilot.py"
    if not app.is_file():
        raise GroundingError(f"the copilot app is not at {app}; run `grounding ui` from a checkout of grounding")
    env = dict(os.environ)
    if args.user:
        env["GROUNDING_UI_USER"] = args.user
    user = env.get("GROUNDING_UI_USER")
    env.setdefault("PREFECT_HOME", str(get_settings().home / "prefect"))  # as `grounding serve` has it
    url = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true"]
    command += ["--server.address", "127.0.0.1", "--server.port", str(args.port)]
    command += ["--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    command += ["--client.toolbarMode", "minimal"]  # no "Deploy" button

    def stop(signum, frame) -> None:
        raise KeyboardInterrupt

    # Both explicitly, before starting Streamlit: a process started in the background of a shell
    # inherits SIGINT ignored (and passes that on through exec), yet Ctrl-C must stop both.
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    # cwd: `python -m` puts it on sys.path, so the app imports flows/ beside grounding/.
    proc = subprocess.Popen(command, env=env, cwd=PROJECT_DIR)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        if proc.poll() is None:
            who = f"as user {user!r}" if user else "in local trusted mode (every repository)"
            print(f"grounding copilot at {url} {who}. Ctrl-C stops it.", flush=True)
            if not args.headless:
                webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Streamlit's own clean shutdown
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _usage_error(err: ValueError) -> int:
    print(f"grounding: error: {err}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_grant(args: argparse.Namespace) -> int:
    from grounding import access

    try:
        access.grant(args.principal, args.repo)
    except ValueError as err:
        return _usage_error(err)
    print(f"{args.repo}: readable by {', '.join(p for p, _ in access.grants(args.repo))}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from grounding import access

    who = args.principal if ":" in args.principal else f"user:{args.principal}"
    try:
        held = (who, args.repo) in access.grants(args.repo)
        access.revoke(args.principal, args.repo)
    except ValueError as err:
        return _usage_error(err)
    print(f"revoked {args.repo} from {who}" if held else f"{who} held no grant of {args.repo}; nothing to revoke")
    if who.startswith("user:") and args.repo in access.allowed_repos(who):
        print(f"{who} can still read {args.repo} through a group; see `grounding access`")
    return 0


def _cmd_member(args: argparse.Namespace) -> int:
    from grounding import access

    try:
        if args.action == "add":
            access.add_member(args.user, args.group)
        else:
            access.remove_member(args.user, args.group)
    except ValueError as err:
        return _usage_error(err)
    print(f"added {args.user} to {args.group}" if args.action == "add" else f"removed {args.user} from {args.group}")
    return 0


def _cmd_access(args: argparse.Namespace) -> int:
    from grounding import access, db, store

    if args.user:
        try:
            repos = access.allowed_repos(args.user)
        except ValueError as err:
            return _usage_error(err)
        print("\n".join(repos) if repos else f"{args.user} may read no repository; `grounding grant` gives access")
        return 0
    grants = access.grants()
    with db.get_engine().connect() as conn:
        members = sorted(store.list_members(conn))
    if not grants and not members:
        print("no grants yet; run `grounding grant PRINCIPAL REPO`")
    for principal, repo in grants:
        print(f"{repo:30} {principal}")
    groups: dict[str, list[str]] = {}
    for group, user in members:
        groups.setdefault(group, []).append(user)
    for group, users in groups.items():
        print(f"group:{group}: {', '.join(users)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grounding", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest (or re-ingest, incrementally) a path or git URL")
    p.add_argument("source", help="a directory or a git URL")
    p.add_argument("--name", help="repository name (default: the last path segment)")
    p.add_argument("--ref", help="branch, tag or commit, for git URLs")
    p.add_argument("--no-wait", action="store_true", help="fail at once if another run holds the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("ask", help="ask a question about ingested repositories; the answer cites [n] file and line")
    p.add_argument("repo")
    p.add_argument("question")
    p.add_argument(
        "--repo",
        dest="more_repos",
        action="append",
        default=[],
        metavar="OTHER",
        help="search this repository too (repeat it, or separate names with commas)",
    )
    p.add_argument("-k", type=int, default=5, help="how many citations (default 5)")
    p.add_argument(
        "--backend",
        choices=["extractive", "hf", "openai", "retro"],
        help="the generator that writes the answer (default: GROUNDING_GENERATOR)",
    )
    p.add_argument("--user", help="ask as this user: access to every repository is checked")
    p.add_argument("--no-code", action="store_true", help="print the cited locations without their code")
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("repos", help="list ingested repositories with their snapshot, counts and index version")
    p.set_defaults(func=_cmd_repos)

    p = sub.add_parser("reindex", help="re-embed a repository into a new index version and swap it in")
    p.add_argument("repo")
    p.add_argument("--encoder", help="a local Hugging Face encoder directory (default: GROUNDING_ENCODER)")
    p.add_argument("--grace-seconds", type=float, default=600.0, help="keep the old version's vectors this long")
    p.add_argument("--no-wait", action="store_true", help="fail at once if another run holds the repository")
    p.set_defaults(func=_cmd_reindex)

    p = sub.add_parser("refresh", help="re-ingest repositories whose commit moved")
    p.add_argument("repos", nargs="*", help="default: every registered repository")
    p.set_defaults(func=_cmd_refresh)

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
    p.add_argument("--save", help="where to write harvested questions (default: GROUNDING_HOME/eval/REPO/)")
    p.add_argument(
        "--rerank",
        action="store_true",
        help="also evaluate with the cross-encoder of GROUNDING_RERANKER; figures without and with it side by side",
    )
    p.set_defaults(func=_cmd_eval)

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
    p.add_argument("--margin", type=float, default=0.02, help="relative held-out MRR gain needed to promote")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(func=_cmd_train)

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

    p = sub.add_parser("serve", help="run a Prefect server, the work pools, the deployments and their workers")
    p.add_argument("--port", type=int, default=4200, help="port of the Prefect server it starts (default 4200)")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("ui", help="run the Streamlit copilot (chat, ingest, index, training) on 127.0.0.1")
    p.add_argument("--port", type=int, default=8501, help="port of the web UI (default 8501)")
    p.add_argument("--user", help="show only the repositories this user may read (default: GROUNDING_UI_USER)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("grant", help="let a user or group read a repository (PRINCIPAL: user:NAME, group:NAME or NAME)")
    p.add_argument("principal")
    p.add_argument("repo")
    p.set_defaults(func=_cmd_grant)

    p = sub.add_parser("revoke", help="take back a grant of a repository")
    p.add_argument("principal")
    p.add_argument("repo")
    p.set_defaults(func=_cmd_revoke)

    p = sub.add_parser("member", help="add a user to a group, or remove them")
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument("user")
    p.add_argument("group")
    p.set_defaults(func=_cmd_member)

    p = sub.add_parser("access", help="the repositories USER may read, or every grant and group")
    p.add_argument("user", nargs="?")
    p.set_defaults(func=_cmd_access)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except GroundingError as err:
        print(f"grounding: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("grounding: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
