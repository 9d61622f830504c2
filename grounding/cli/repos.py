"""Subcommands that ingest, ask and serve: ingest, ask, repos, reindex, delete, refresh, serve, ui."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from grounding.cli.common import EXIT_ERROR
from grounding.errors import GroundingError, InvalidArgument
from grounding.validation import is_loopback, loopback_hosts

if TYPE_CHECKING:
    from grounding.index.remove import RemovalReport


def _cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from grounding.index.ingest import ingest

    bar = None

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="file", desc="ingest", disable=args.quiet)
        bar.update(done - bar.n)

    report = ingest(
        args.source,
        name=args.name,
        ref=args.ref,
        progress=progress,
        wait=not args.no_wait,
        replace_source=args.replace_source,
    )
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
    from grounding.answer.ask import ask_stream
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
        print(f"\n[{i}] {c.repo + ': ' if several else ''}{c.location}{c.role_tag}  (score {c.score:.4f})")
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
    from grounding.index.reindex import reindex

    r = reindex(args.repo, encoder=args.encoder, grace_seconds=args.grace_seconds, wait=not args.no_wait)
    print(
        f"{r.repo}: index version {r.previous_version or '-'} -> {r.version} ({r.encoder}), "
        f"{r.chunks} chunks, {r.embedded} encoded; collected {list(r.collected) or 'nothing'}"
    )
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from grounding.index.remove import remove_repo, sweep_leftovers

    if (args.repo is None) == (not args.leftovers):
        raise InvalidArgument("name a repository to delete, or give --leftovers (and no repository)")
    if args.leftovers:  # the directories are listed before they are asked for: no prompt, --yes deletes
        really = args.yes and not args.dry_run
        deleted, kept = sweep_leftovers(dry_run=not really)
        listed = f": {', '.join(map(str, deleted))}" if deleted else ""
        print(
            f"{'deleted' if really else 'would delete'} {len(deleted)} directories that belong to no repository"
            + listed
            + ("" if really or not deleted or args.dry_run else "; --yes deletes them")
        )
        if kept:
            print(f"kept (in use, or links): {', '.join(map(str, kept))}")
        return 0
    if args.yes and not args.dry_run:  # confirmed already: no preview to show
        return _deleted(remove_repo(args.repo, wait=not args.no_wait))
    preview = remove_repo(args.repo, dry_run=True, wait=not args.no_wait)
    what = (
        f"{preview.repo}: {preview.files} files, {preview.chunks} chunks, {len(preview.removed) - 1} eval indexes, "
        f"{preview.training_runs} training runs, {len(preview.deleted)} directories under GROUNDING_HOME"
    )
    if args.dry_run:
        print(f"would delete {what}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidArgument(f"deleting {what} cannot be undone: pass --yes to confirm")
        try:
            answer = input(f"delete {what}? This cannot be undone. [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return EXIT_ERROR
    return _deleted(remove_repo(args.repo, wait=not args.no_wait))


def _deleted(done: RemovalReport) -> int:
    print(
        f"deleted {done.repo}: {done.files} files, {done.chunks} chunks, {len(done.removed) - 1} eval indexes, "
        f"{done.training_runs} training runs, {len(done.deleted)} directories"
        + (f"; kept {', '.join(map(str, done.kept))} (in use elsewhere or not removable)" if done.kept else "")
    )
    return 0


def _cmd_refresh(args: argparse.Namespace) -> int:
    from grounding.index.refresh import refresh, repositories

    failed = 0
    for name in args.repos or repositories():
        try:
            outcome = refresh(name)
            print(f"{name}: {outcome.action} ({outcome.reason})")
        except GroundingError as err:
            failed += 1
            print(f"{name}: failed ({err})", file=sys.stderr)
    return EXIT_ERROR if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from grounding.service.serve import serve

    def ready(api_url: str) -> None:
        print(
            f"grounding is serving. In another shell:\n  export PREFECT_API_URL={api_url}\n"
            "  prefect deployment run ingest-repo/default -p source=PATH_OR_URL\nCtrl-C stops it.",
            flush=True,
        )

    return serve(port=args.port, ready=ready)


def ui_auth(address: str, *, login: bool, user: str | None) -> str:
    """How the copilot's sessions authenticate: `token` (each signs in with an API token) or `none`.

    `none` (local trusted mode, or the one `--user`) only on loopback and only without --login: whoever
    reaches the port acts as that user, or reads every repository. Off loopback every session signs in.
    """
    if is_loopback(address) and not login:
        return "none"
    if user:
        raise InvalidArgument(
            "--user is for the copilot on this machine only; with --login or off loopback every browser session "
            "signs in with its own API token (`grounding token create USER`)"
        )
    return "token"


def _cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import subprocess
    import time
    import urllib.error
    import urllib.request
    import webbrowser

    from grounding.config import get_settings
    from grounding.service.serve import PROJECT_DIR

    auth = ui_auth(args.address, login=args.login, user=args.user)
    app = PROJECT_DIR / "app" / "copilot.py"
    if not app.is_file():
        raise GroundingError(f"the copilot app is not at {app}; run `grounding ui` from a checkout of grounding")
    env = dict(os.environ)
    env["GROUNDING_UI_AUTH"] = auth
    if auth == "token":
        env.pop("GROUNDING_UI_USER", None)
    elif args.user:
        env["GROUNDING_UI_USER"] = args.user
    user = env.get("GROUNDING_UI_USER")
    env.setdefault("PREFECT_HOME", str(get_settings().home / "prefect"))  # as `grounding serve` has it
    host = f"[{args.address}]" if ":" in args.address else args.address
    url = f"http://{host}:{args.port}"
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true"]
    command += ["--server.address", args.address, "--server.port", str(args.port)]
    command += ["--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    command += ["--client.toolbarMode", "minimal"]  # no "Deploy" button
    if auth == "none":  # no login: only a page this machine names may open a session (no DNS rebinding)
        command += [arg for host in loopback_hosts(args.address) for arg in ("--server.allowedHosts", host)]

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
            who = (
                "with a login (each session signs in with an API token)"
                if auth == "token"
                else f"as user {user!r}"
                if user
                else "in local trusted mode (every repository)"
            )
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="ingest (or re-ingest, incrementally) a path or git URL")
    p.add_argument("source", help="a directory or a git URL")
    p.add_argument("--name", help="repository name (default: the last path segment)")
    p.add_argument("--ref", help="branch, tag or commit, for git URLs")
    p.add_argument("--no-wait", action="store_true", help="fail at once if another run holds the repository")
    p.add_argument(
        "--replace-source",
        action="store_true",
        help="read an existing repository from this new source from now on (otherwise another source is refused)",
    )
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

    p = sub.add_parser(
        "delete", help="delete a repository: its chunks, vectors, grants, eval indexes, runs and files grounding keeps"
    )
    p.add_argument("repo", nargs="?")
    p.add_argument(
        "--leftovers",
        action="store_true",
        help="instead, delete what belongs to no repository under GROUNDING_HOME (clones, runs, eval and RETRO "
        "directories of deleted repositories, and of the naming before hashes)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted and delete nothing")
    p.add_argument("--no-wait", action="store_true", help="fail at once if another run holds the repository")
    p.set_defaults(func=_cmd_delete)

    p = sub.add_parser("refresh", help="re-ingest repositories whose commit moved")
    p.add_argument("repos", nargs="*", help="default: every registered repository")
    p.set_defaults(func=_cmd_refresh)

    p = sub.add_parser("serve", help="run a Prefect server, the work pools, the deployments and their workers")
    p.add_argument("--port", type=int, default=4200, help="port of the Prefect server it starts (default 4200)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "ui", help="run the Streamlit copilot (chat, ingest, index, training); off loopback behind a login"
    )
    p.add_argument("--port", type=int, default=8501, help="port of the web UI (default 8501)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only); any other asks every session to sign in",
    )
    p.add_argument(
        "--login",
        action="store_true",
        help="every browser session signs in with an API token (always so off loopback)",
    )
    p.add_argument(
        "--user",
        help="on loopback without --login: show only what this user may read (default: GROUNDING_UI_USER)",
    )
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(func=_cmd_ui)
