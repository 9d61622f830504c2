"""The access-control and input holes of issue 11, one test each, against the real database, git and encoder.

Each test was run against the code before the fix and failed there (see the closing note of that
change); the names say what must hold.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

import grounding
from grounding import access, store
from grounding.cli import main
from grounding.errors import AccessDenied, GroundingError, InvalidArgument, SourceNotFound
from grounding.index.ingest import ingest
from tests.conftest import git, git_repo, save_tiny_bert
from tests.conftest import write_tree as tree

SECRET_PASSWORD = "Zq8vT2kWm4Rx9pLs7Yb3"


@pytest.fixture
def two_teams(engine, repo_name, hashing, tmp_path):
    """`public` (granted to alice) and `payroll` (granted to nobody), each a real git checkout."""
    public = git_repo(tree(tmp_path / "public", {"app/greet.py": "def greet(name):\n    return f'hello {name}'\n"}))
    payroll = git_repo(
        tree(
            tmp_path / "payroll",
            {"salaries/compute_bonus.py": "def compute_payroll_bonus(salary):\n    return salary * 0.42\n"},
        )
    )
    names = {"public": f"{repo_name}-public", "payroll": f"{repo_name}-payroll"}
    ingest(str(public), name=names["public"], embedder=hashing)
    ingest(str(payroll), name=names["payroll"], embedder=hashing)
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    access.grant(alice, names["public"])
    return {**names, "alice": alice, "public_dir": public, "payroll_dir": payroll}


def all_text(answer) -> str:
    return "\n".join(f"{c.repo} {c.path} {c.symbol} {c.snippet}" for c in answer.citations) + answer.text


# 1 ---------------------------------------------------------------------------------------------


def test_a_granted_user_cannot_repoint_a_repository_at_another_directory(two_teams, hashing):
    t = two_teams
    with pytest.raises(GroundingError, match="ingested from"):
        ingest(str(t["payroll_dir"]), name=t["public"], embedder=hashing, user=t["alice"])
    with pytest.raises(AccessDenied):  # nor register a new repository, which only an administrator does
        ingest(str(t["payroll_dir"]), name=f"{t['public']}-mine", embedder=hashing, user=t["alice"])
    answer = grounding.ask(t["public"], "compute payroll bonus salary", user=t["alice"])
    assert "payroll" not in all_text(answer).lower()
    with grounding.db.get_engine().connect() as conn:
        assert store.repo_source(conn, t["public"])[0] == str(t["public_dir"].resolve()), "the source is unchanged"
    # Re-ingesting from its own source is allowed (as checked out: no ref), and a trusted caller re-points only
    # when told to.
    with pytest.raises(InvalidArgument, match="read from a directory") as refused:
        ingest(str(t["public_dir"]), name=t["public"], ref="main", embedder=hashing, user=t["alice"])
    assert str(t["public_dir"]) not in str(refused.value), "a reader is not told where the server reads it"
    ingest(str(t["public_dir"]), name=t["public"], embedder=hashing, user=t["alice"])
    with pytest.raises(GroundingError, match="--replace-source"):
        ingest(str(t["payroll_dir"]), name=t["public"], embedder=hashing)
    ingest(str(t["payroll_dir"]), name=t["public"], embedder=hashing, replace_source=True)
    with grounding.db.get_engine().connect() as conn:
        assert store.repo_source(conn, t["public"])[0] == str(t["payroll_dir"].resolve())


def test_a_granted_user_cannot_move_the_ref_a_repository_follows(engine, repo_name, hashing, tmp_path):
    """A reader's re-ingest reads the registered ref: not an old tag of their choosing, and not the default branch
    when they name none (what every reader with a grant is served is an administrator's choice)."""
    origin = git_repo(tree(tmp_path / "origin", {"pay.py": "def pay():\n    return 'release'\n"}))
    git(origin, "branch", "release")
    (origin / "pay.py").write_text("def pay():\n    return 'main'\n")
    git(origin, "commit", "-qam", "main moves on")
    ingest(f"file://{origin}", name=repo_name, ref="release", embedder=hashing)
    access.grant("alice", repo_name)
    with pytest.raises(GroundingError, match="follows 'release'"):
        ingest(f"file://{origin}", name=repo_name, ref="main", embedder=hashing, user="alice")
    ingest(f"file://{origin}", name=repo_name, embedder=hashing, user="alice")  # no ref: the registered one
    with engine.connect() as conn:
        assert store.repo_source(conn, repo_name)[1] == "release"
    assert "'release'" in all_text(grounding.ask(repo_name, "pay", user="alice"))


# 2 ---------------------------------------------------------------------------------------------


def test_prefix_at_reads_only_what_ingest_indexed_and_redacted(engine, repo_name, hashing, tmp_path):
    from grounding.answer.completion import prefix_at

    root = tree(
        tmp_path / "svc",
        {
            "main.py": f"import os\nPASSWORD = '{SECRET_PASSWORD}'\n\ndef main():\n    return 1\n",
            ".env": f"DB_PASSWORD={SECRET_PASSWORD}\n",
            "ignored.py": "def ignored():\n    return 'ignored'\n",
            ".gitignore": "ignored.py\n",
        },
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "main.py", ".env", ".gitignore")
    git(root, "commit", "-q", "-m", "initial")
    (root / "untracked.py").write_text("def untracked():\n    return 'untracked'\n")
    ingest(str(root), name=repo_name, embedder=hashing)

    text = prefix_at(repo_name, "main.py", None)
    assert "def main" in text and SECRET_PASSWORD not in text, "an indexed file is read back redacted"
    for path in (".env", "ignored.py", "untracked.py", ".git/config", ".git/HEAD", "../svc/main.py", "/etc/passwd"):
        with pytest.raises(GroundingError):
            prefix_at(repo_name, path, 1)
    (root / "main.py").write_text("def main():\n    return 'changed since the ingest'\n")
    with pytest.raises(SourceNotFound, match="changed on disk"):
        prefix_at(repo_name, "main.py", 1)
    (root / "main.py").unlink()
    os.mkfifo(root / "main.py")  # read as ingest reads: no wait on a pipe, nothing but a regular file
    done: list = []
    reader = threading.Thread(
        target=lambda: done.append(pytest.raises(SourceNotFound, prefix_at, repo_name, "main.py", 1))
    )
    reader.start()
    reader.join(10)
    if not done:
        with open(root / "main.py", "wb"):  # let the blocked reader go
            pass
    assert done, "prefix_at waited on a FIFO put where an indexed file was"


def test_a_tree_in_history_that_names_dotdot_or_dotgit_writes_nothing_outside_the_eval_tree(
    engine, repo_name, hashing, tmp_path
):
    """git's objects may hold tree entries named `..` or `.git` (clone and fetch take them): the commits harvester
    reads its base tree from objects, and must neither write above its eval tree nor plant a .git/config there
    (git would run its core.fsmonitor)."""
    from grounding.config import get_settings
    from grounding.evaluation.eval_index import run_eval

    origin = git_repo(tree(tmp_path / "origin", {f"m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(6)}))
    blob = git(origin, "hash-object", "-w", "--stdin", stdin="print('written by a committer')\n")
    config = git(origin, "hash-object", "-w", "--stdin", stdin="[core]\n\tfsmonitor = touch PWNED; false #\n")
    up = git(origin, "mktree", stdin=f"100644 blob {blob}\tPWNED.py\n")
    for _ in range(3):
        up = git(origin, "mktree", stdin=f"040000 tree {up}\t..\n")
    dotgit = git(origin, "mktree", stdin=f"100644 blob {config}\tconfig\n")
    entries = git(origin, "ls-tree", "HEAD")
    base_tree = git(origin, "mktree", stdin=f"{entries}\n040000 tree {up}\t..\n040000 tree {dotgit}\t.GIT\n")
    parent = git(origin, "commit-tree", base_tree, "-p", "HEAD", "-m", "x")
    clean = git(origin, "rev-parse", "HEAD^{tree}")
    for i in range(6):  # questions: each commit changes one source file, on the clean tree
        (origin / f"m{i}.py").write_text(f"def f{i}():\n    return {i} + 1\n")
        git(origin, "read-tree", clean if i == 0 else parent)
        git(origin, "add", f"m{i}.py")
        written = git(origin, "write-tree")
        parent = git(origin, "commit-tree", written, "-p", parent, "-m", f"Make function {i} return one more")
    git(origin, "update-ref", "refs/heads/main", parent)
    ingest(f"file://{origin}", name=repo_name, embedder=hashing)
    home = get_settings().home
    with contextlib.suppress(GroundingError):
        run_eval(repo_name, harvester="commits", split="all", modes=("lexical",))
    planted = [
        p
        for p in tmp_path.rglob("*")
        if p.name in ("PWNED.py", "PWNED") or (p.name.lower() == ".git" and home / "eval" in p.parents)
    ]
    assert not planted, planted


def test_a_local_checkouts_own_git_config_runs_nothing_when_it_is_ingested(two_teams, hashing, tmp_path):
    """A local source is a directory others may write to: its .git/config's core.fsmonitor (run by any git command
    that reads the index) and hooks must not run as the worker, whoever asks for the ingest (from a review)."""
    t = two_teams
    pwned = tmp_path / "PWNED"
    src = t["public_dir"]
    git(src, "config", "core.fsmonitor", f"touch {pwned}; false #")
    hooks = src / ".git" / "hooks"
    for hook in ("post-checkout", "post-index-change", "reference-transaction"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {pwned}\n")
        (hooks / hook).chmod(0o755)
    (src / "app" / "extra.py").write_text("def extra():\n    return 1\n")
    git(src, "add", "-A")
    pwned.unlink(missing_ok=True)  # the test's own git calls may run them: only grounding's count
    report = ingest(str(src), name=t["public"], embedder=hashing, user=t["alice"])  # a granted user's re-ingest
    assert report.files_changed == 1 and not pwned.exists(), "the checkout's config ran a command"
    ingest(str(src), name=f"{t['public']}-2", embedder=hashing)  # and an administrator's first ingest of it
    assert not pwned.exists(), "the checkout's config ran a command"


def test_a_reader_whose_checkout_cannot_be_made_is_not_told_the_source_or_gits_reply(
    engine, repo_name, hashing, tmp_path
):
    """A serving host with no clone fetches one for a read; when that fails, a user learns that the files are not
    here, not the source URL (never shown over the API) nor git's error; a trusted caller still gets both."""
    import shutil

    from grounding.answer.completion import prefix_at
    from grounding.config import get_settings
    from grounding.errors import SourceUnreachable
    from grounding.service.mcp import error_text

    origin = git_repo(tree(tmp_path / "internal-origin-host", {"a.py": "def a():\n    return 1\n"}))
    ingest(f"file://{origin}", name=repo_name, embedder=hashing)
    access.grant("alice", repo_name)
    with engine.connect() as conn:
        repo_id = store.repo_id(conn, repo_name)
    shutil.rmtree(get_settings().checkouts_dir / f"repo-{repo_id}")  # an API host whose home holds no clone
    origin.rename(tmp_path / "moved")
    with pytest.raises(SourceNotFound) as seen:
        prefix_at(repo_name, "a.py", None, user="alice")
    assert "could not be fetched onto this server" in str(seen.value)
    assert "internal-origin-host" not in error_text(seen.value) and "git" not in str(seen.value).lower()
    with pytest.raises(SourceUnreachable, match="internal-origin-host"):
        prefix_at(repo_name, "a.py", None)


# 3 ---------------------------------------------------------------------------------------------


def test_a_name_that_looks_derived_grants_nothing(engine, repo_name, hashing, tmp_path):
    billing = f"{repo_name}-billing"
    lookalike = f"{billing}~eval-payroll"
    ingest(str(tree(tmp_path / "b", {"b.py": "def bill():\n    return 1\n"})), name=billing, embedder=hashing)
    with engine.begin() as conn:  # an unrelated repository under that name, as older releases let anyone make
        store.upsert_repo(conn, lookalike, source="/elsewhere", ref=None)
    user = f"bob-{uuid.uuid4().hex[:6]}"
    access.grant(user, billing)
    assert access.allowed_repos(user) == [billing]
    with pytest.raises(AccessDenied):
        access.authorize(user, [lookalike])
    with pytest.raises(GroundingError, match="not a valid repository name"):  # and no user can make one now
        ingest(str(tmp_path / "b"), name=lookalike, embedder=hashing)


# 4 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../../x", "a/../../b", "/abs", "x" * 5000, "bell\x07", "nul\x00", "tilde~eval-docstrings", "", " ", "a b"],
)
def test_repository_names_follow_one_grammar(engine, tmp_path, hashing, name):
    src = tree(tmp_path / "src", {"a.py": "def a():\n    return 1\n"})
    with pytest.raises(GroundingError, match="not a valid repository name"):
        ingest(str(src), name=name, embedder=hashing)
    with pytest.raises(GroundingError):
        grounding.ask(name, "what does a return")


def test_a_clone_lives_under_a_directory_named_by_the_repository_id(engine, repo_name, hashing, tmp_path):
    origin = git_repo(tree(tmp_path / "origin", {"a.py": "def a():\n    return 1\n"}))
    name = f"{repo_name}/team"  # OWNER/NAME is allowed; the checkout is not named after it
    ingest(f"file://{origin}", name=name, embedder=hashing)
    checkouts = grounding.config.get_settings().checkouts_dir
    with engine.connect() as conn:
        rid = store.repo_id(conn, name)
    assert [p.name for p in checkouts.iterdir()] == [f"repo-{rid}"]


# 5 ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def dumb_http_git(root: Path):
    """A bare clone of `root` served over git's dumb HTTP protocol on loopback."""
    bare = root.parent / "served" / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(root), str(bare)], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bare.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}/repo.git"
    finally:
        server.shutdown()


def test_credentials_in_a_git_url_are_never_stored_or_shown(engine, repo_name, hashing, tmp_path, capsys):
    origin = git_repo(tree(tmp_path / "origin", {"a.py": "def a():\n    return 1\n"}))
    with dumb_http_git(origin) as where:
        ingest(f"http://deploy:{SECRET_PASSWORD}@{where}", name=repo_name, embedder=hashing)
        assert main(["repos"]) == 0
    with engine.connect() as conn:
        source = store.repo_source(conn, repo_name)[0]
        dumped = "\n".join(map(str, conn.execute(sa.text("SELECT * FROM repositories")).all()))
    assert source == f"http://{where}"
    assert SECRET_PASSWORD not in dumped + capsys.readouterr().out
    home = grounding.config.get_settings().checkouts_dir
    for config in home.glob("*/.git/config"):
        assert SECRET_PASSWORD not in config.read_text()
    # A remote that fails: the error does not echo the password, and nothing is registered.
    with pytest.raises(GroundingError) as err:
        ingest(f"http://deploy:{SECRET_PASSWORD}@127.0.0.1:9/gone.git", name=f"{repo_name}-gone", embedder=hashing)
    assert SECRET_PASSWORD not in str(err.value)
    with engine.connect() as conn:
        assert store.repo_record(conn, f"{repo_name}-gone") is None


# 6 ---------------------------------------------------------------------------------------------


def test_several_repositories_fuse_fairly_when_one_has_a_reranker(engine, repo_name, hashing, tmp_path):
    a, b = f"{repo_name}-a", f"{repo_name}-b"
    body = "".join(f"def retry_charge_{i}(charge):\n    return retry(charge, attempt={i})\n\n\n" for i in range(6))
    ingest(str(tree(tmp_path / "a", {"a.py": body})), name=a, embedder=hashing)
    ingest(str(tree(tmp_path / "b", {"b.py": body})), name=b, embedder=hashing)
    reranker = save_tiny_bert(tmp_path / "reranker", "BertForSequenceClassification", num_labels=1)
    with engine.begin() as conn:
        run = store.insert_training_run(
            conn, store.repo_id(conn, a), kind="reranker", config={}, device="cpu", host=None, pid=None
        )
        store.update_training_run(conn, run, status="complete", decision="promoted", checkpoint=str(reranker))
    answer = grounding.ask([a, b], "retry a failed charge", k=4)
    assert [c.repo for c in answer.citations] == [a, b, a, b], "each repository's list counts by its rank"


# 7 ---------------------------------------------------------------------------------------------


def test_inline_filters_apply_in_the_python_api_and_the_cli(engine, repo_name, hashing, tmp_path, capsys):
    ingest(
        str(
            tree(
                tmp_path / "r",
                {
                    "src/retry.py": "def retry_with_backoff(call):\n    return call()\n",
                    "tests/test_retry.py": "def test_retry_with_backoff():\n    assert retry_with_backoff(f)\n",
                    "docs/retry.md": "# Retry with backoff\n\nCalls are retried with backoff.\n",
                },
            )
        ),
        name=repo_name,
        embedder=hashing,
    )
    answer = grounding.ask(repo_name, "path:src/** lang:python retry with backoff", k=5)
    assert answer.citations and {c.path for c in answer.citations} == {"src/retry.py"}
    assert main(["ask", repo_name, "path:tests/** retry with backoff", "--no-code"]) == 0
    out = capsys.readouterr().out
    assert "tests/test_retry.py" in out and "src/retry.py" not in out and "docs/retry.md" not in out


# 8 and the leftovers ---------------------------------------------------------------------------


def test_a_non_utf8_file_name_is_skipped_with_a_reason(engine, repo_name, hashing, tmp_path):
    root = tree(tmp_path / "r", {"ok.py": "def ok():\n    return 1\n"})
    with open(os.path.join(os.fsencode(root), b"caf\xe9.py"), "wb") as f:  # a Latin-1 name: not UTF-8
        f.write(b"def latin():\n    return 1\n")
    git_repo(root)
    report = ingest(str(root), name=repo_name, embedder=hashing)
    assert report.skipped_by_reason() == {"non-utf8-name": 1}
    assert report.files_seen == 2 and report.files_changed == 1


def test_a_repository_whose_only_ingest_failed_says_it_has_no_index(engine, repo_name, tmp_path, monkeypatch):
    ingest_module = sys.modules["grounding.index.ingest"]
    from grounding.errors import NotIndexed

    src = tree(tmp_path / "r", {"a.py": "def a():\n    return 1\n"})

    def broken(*args, **kwargs):
        raise RuntimeError("the encoder broke")

    monkeypatch.setattr(ingest_module, "_write_snapshot", broken)
    with pytest.raises(GroundingError):
        ingest(str(src), name=repo_name)
    with pytest.raises(NotIndexed, match="no index yet: its last ingest failed .*the encoder broke"):
        grounding.ask(repo_name, "what does a return")
    # A user granted it learns that it failed, not the error's text (which may name server paths).
    access.grant("reader-of-a", repo_name)
    with pytest.raises(NotIndexed, match="no index yet: its last ingest failed;") as err:
        grounding.ask(repo_name, "what does a return", user="reader-of-a")
    assert "encoder broke" not in str(err.value)


def test_a_normal_file_with_a_few_long_lines_is_not_minified():
    from grounding.index.sources import classify
    from grounding.records import SkippedFile

    lines = [f"value_{i} = {i}\n" for i in range(200)] + ["TABLE = '" + "x" * 3000 + "'\n"] * 3
    normal = classify("table.py", "".join(lines).encode(), max_bytes=1 << 20, max_line_length=1000)
    assert not isinstance(normal, SkippedFile), normal
    minified = classify(
        "app.min2.js", b"/*! v1 */\n" + b"var a=1;" * 2000 + b"\n", max_bytes=1 << 20, max_line_length=1000
    )
    assert isinstance(minified, SkippedFile) and minified.reason == "minified"


def test_a_dead_database_mid_ingest_is_retried_by_the_flow(engine, repo_name, hashing, tmp_path, monkeypatch):
    """The failure reaches the flow as DatabaseUnavailable (which retry_on_io retries), not as IngestError."""
    ingest_module = sys.modules["grounding.index.ingest"]
    from grounding.errors import DatabaseUnavailable

    src = tree(tmp_path / "r", {"a.py": "def a():\n    return 1\n"})

    def dead(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT ...", {}, ConnectionError("server closed the connection unexpectedly"))

    monkeypatch.setattr(ingest_module, "_write_snapshot", dead)
    with pytest.raises(DatabaseUnavailable, match="stopped answering"):
        ingest(str(src), name=repo_name, embedder=hashing)


def test_refresh_leaves_derived_eval_indexes_alone(engine, repo_name, hashing, tmp_path):
    from grounding.index.refresh import refresh, repositories

    src = tree(tmp_path / "r", {"a.py": 'def a():\n    """Return one."""\n    return 1\n'})
    ingest(str(src), name=repo_name, embedder=hashing)
    ingest(str(src), name=f"{repo_name}~eval-docstrings", embedder=hashing, derived_from=repo_name)
    assert f"{repo_name}~eval-docstrings" not in repositories() and repo_name in repositories()
    with pytest.raises(GroundingError, match="eval index derived from"):
        refresh(f"{repo_name}~eval-docstrings")


@pytest.mark.parametrize(
    ("address", "login", "auth"),
    [
        ("127.0.0.1", False, "none"),
        ("::1", False, "none"),
        ("localhost", False, "none"),
        ("127.0.0.1", True, "token"),
        ("0.0.0.0", False, "token"),  # off loopback every session signs in: no trusted mode to offer
        ("10.1.2.3", False, "token"),
        ("copilot.internal", False, "token"),
    ],
)
def test_the_copilot_offers_trusted_mode_only_on_loopback(address, login, auth):
    from grounding.cli.repos import ui_auth

    assert ui_auth(address, login=login, user=None) == auth
    if auth == "token":
        with pytest.raises(GroundingError, match="--user is for the copilot on this machine only"):
            ui_auth(address, login=login, user="alice")


def test_grounding_ui_with_a_user_off_loopback_exits_with_one_line(capsys):
    assert main(["ui", "--address", "0.0.0.0", "--user", "alice", "--headless"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "signs in with its own API token" in err


# What an attacker review of the fix found, each pinned ---------------------------------------------


def test_a_user_cannot_choose_the_model_files_a_call_loads(two_teams, tmp_path):
    from grounding.answer.completion import complete
    from grounding.models.checkpoint import load_retro
    from grounding.search.retrieve import search

    t = two_teams
    with pytest.raises(GroundingError, match="trusted callers"):
        complete(t["public"], "def ", checkpoint=str(tmp_path / "any.pt"), user=t["alice"])
    with pytest.raises(GroundingError, match="trusted callers"):
        search(t["public"], "greet", rerank=str(tmp_path), user=t["alice"])

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import torch

    torch.save({"config": {}, "model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(GroundingError, match="not a RETRO checkpoint"):
        load_retro(tmp_path / "evil.pt")  # a trusted caller's path is read as data, never run
    assert not (tmp_path / "pwned").exists()


def test_vectors_are_not_reused_across_unrelated_repositories(engine, repo_name, hashing, tmp_path):
    """Reuse counts are shown to users who may re-ingest a repository: they must not reveal another's chunks."""
    same = {"pay.py": "def pay(amount):\n    return amount * 1.2\n"}
    ingest(str(tree(tmp_path / "secret", same)), name=f"{repo_name}-secret", embedder=hashing)
    mine = ingest(str(tree(tmp_path / "mine", same)), name=f"{repo_name}-mine", embedder=hashing)
    assert (mine.embeddings_computed, mine.embeddings_reused) == (1, 0)
    derived = ingest(
        str(tmp_path / "mine"),
        name=f"{repo_name}-mine~eval-docstrings",
        embedder=hashing,
        derived_from=f"{repo_name}-mine",
    )
    assert (derived.embeddings_computed, derived.embeddings_reused) == (0, 1), "within a family, still shared"


def test_a_password_holding_an_at_sign_is_stripped_whole():
    from grounding.index.sources import display_url, scrub

    assert display_url("https://u:p@ss@host/x.git") == "https://host/x.git"
    assert display_url("ssh://git:p@ss@host/x.git") == "ssh://git@host/x.git"
    assert "ss@" not in scrub("fatal: could not read https://u:p@ss@host/x.git")
    with pytest.raises(GroundingError, match="query or fragment"):
        ingest("https://host/x.git?access_token=abc", name="x")


def test_a_busy_repository_tells_nothing_to_a_user_who_may_not_read_it(two_teams, engine):
    t = two_teams
    with store.repo_lock(engine, t["payroll"]):
        with pytest.raises(AccessDenied):
            ingest(str(t["payroll_dir"]), name=t["payroll"], user=t["alice"], wait=False)


def test_migration_0008_marks_old_eval_indexes_and_strips_stored_credentials(engine, repo_name):
    """What older releases left in the catalogue, cleaned by the migration's own statements."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "migrations" / "versions" / "0008_derived_from.py"
    spec = importlib.util.spec_from_file_location("migration_0008", path)
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    with engine.begin() as conn:
        parent = store.upsert_repo(
            conn, repo_name, source=f"https://ci:{SECRET_PASSWORD}@git.example.com/a.git", ref=None
        )
        store.upsert_repo(conn, f"{repo_name}~eval-docstrings", source="/eval", ref=None)
        store.upsert_repo(conn, f"{repo_name}~eval-payroll", source="/elsewhere", ref=None)
        snap = store.begin_snapshot(conn, parent, commit=None, ref=None)
        store.fail_snapshot(
            conn, snap, error=f"fatal: could not read https://ci:{SECRET_PASSWORD}@git.example.com/a.git"
        )
        for statement in (
            migration.MARK_DERIVED,
            migration.STRIP_SOURCE_CREDENTIALS,
            migration.SCRUB_ERROR_CREDENTIALS,
        ):
            conn.execute(sa.text(statement))
        assert store.repo_record(conn, f"{repo_name}~eval-docstrings").derived_from == repo_name
        assert store.repo_record(conn, f"{repo_name}~eval-payroll").derived_from is None, "not a harvester's name"
        assert store.repo_record(conn, repo_name).source == "https://git.example.com/a.git"
        assert store.snapshot(conn, snap)["error"] == "fatal: could not read https://***@git.example.com/a.git"


def test_a_default_name_is_made_to_fit_the_grammar():
    from grounding.index.ingest import default_name
    from grounding.validation import repo_name

    for source, expected in (("/srv/My Project (old)", "My-Project-old"), ("https://h/acme/api.git", "api")):
        assert repo_name(default_name(source)) == expected
