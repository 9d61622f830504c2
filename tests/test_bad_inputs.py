"""docs/bad-inputs.md, row by row: each bad input gets the error its row names, and loses nothing."""

from __future__ import annotations

import io
import re
import shutil
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import grounding
from grounding import db, store
from grounding.answer import completion
from grounding.cli import main
from grounding.errors import (
    DatabaseUnavailable,
    GeneratorUnavailable,
    InvalidArgument,
    NotIndexed,
    RepoNotFound,
    SourceConflict,
    SourceNotFound,
    SourceUnreachable,
)
from grounding.index.ingest import ingest
from grounding.search.filters import SearchFilters
from grounding.search.retrieve import search
from tests.conftest import git_repo

TABLE = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
ROW = re.compile(r"^\| `([a-z0-9-]+)` \|", re.M)
Q = "what does compute return"


@pytest.fixture
def repo(engine, repo_name, hashing, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "calc.py").write_text("def compute(x):\n    return x * 2\n")
    ingest(str(git_repo(src)), name=repo_name, embedder=hashing)
    return repo_name


def raises(kind, match, call):
    with pytest.raises(kind, match=match):
        result = call()
        if hasattr(result, "__next__"):
            list(result)


def one_line_exit(capsys, argv, match, *, prefix="grounding: "):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix) and re.search(match, err), err


def case_only_ingest_failed(ctx):
    name = f"{ctx.repo}-failing"
    ctx.monkeypatch.setattr(sys.modules["grounding.index.ingest"], "_write_snapshot", _boom)
    with pytest.raises(Exception):
        ingest(str(ctx.tmp_path / "src"), name=name)
    raises(NotIndexed, "has no index yet: its last ingest failed .*boom", lambda: grounding.ask(name, Q))


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def case_dead_db(ctx):
    def dead(*args, **kwargs):
        raise sa.exc.OperationalError("COPY chunks", {}, ConnectionError("server closed the connection"))

    before = _visible(ctx)
    (ctx.tmp_path / "src" / "more.py").write_text("def more():\n    return 3\n")
    ctx.monkeypatch.setattr(sys.modules["grounding.index.ingest"], "_write_snapshot", dead)
    raises(DatabaseUnavailable, "stopped answering", lambda: ingest(str(ctx.tmp_path / "src"), name=ctx.repo))
    assert _visible(ctx) == before
    from flows.ingest import retry_on_io

    class State:
        def result(self):
            raise DatabaseUnavailable("gone")

    assert retry_on_io(None, None, State()), "the flow retries it"


def _visible(ctx) -> list:
    return [c.path for c in grounding.ask(ctx.repo, Q, k=5).citations]


def case_deleted_before_refresh(ctx):
    before = _visible(ctx)
    shutil.rmtree(ctx.tmp_path / "src")
    one_line_exit(ctx.capsys, ["refresh", ctx.repo], "failed .*does not exist any more", prefix=f"{ctx.repo}: ")
    assert _visible(ctx) == before


def case_non_utf8_name(ctx):
    import os

    src = ctx.tmp_path / "latin"
    src.mkdir()
    (src / "ok.py").write_text("def ok():\n    return 1\n")
    with open(os.path.join(os.fsencode(src), b"r\xe9sum\xe9.py"), "wb") as f:
        f.write(b"def cv():\n    return 1\n")
    report = ingest(str(git_repo(src)), name=f"{ctx.repo}-latin", embedder=ctx.hashing)
    assert report.skipped_by_reason() == {"non-utf8-name": 1} and report.files_changed == 1


def case_url_credentials(ctx):
    name = f"{ctx.repo}-gone"
    with pytest.raises(SourceUnreachable) as err:
        ingest("https://deploy:S3cretT0ken@127.0.0.1:9/gone.git", name=name)
    assert "S3cretT0ken" not in str(err.value)
    with grounding.db.get_engine().connect() as conn:
        assert store.repo_record(conn, name) is None


def case_repoint(ctx):
    other = ctx.tmp_path / "other"
    other.mkdir()
    (other / "o.py").write_text("def other():\n    return 1\n")
    raises(SourceConflict, "--replace-source", lambda: ingest(str(other), name=ctx.repo))


def case_complete_tokens(ctx):
    from grounding.answer.completion import complete

    raises(
        InvalidArgument, "max_new_tokens must be between 1 and 4096", lambda: complete(ctx.repo, "x", max_new_tokens=0)
    )


def case_cli_unexpected(ctx):
    def bug(*args, **kwargs):
        raise KeyError("a bug")

    ctx.monkeypatch.setattr(sys.modules["grounding.answer.ask"], "ask_stream", bug)
    one_line_exit(ctx.capsys, ["ask", ctx.repo, Q], r"unexpected error: KeyError: .*run with -v")
    with pytest.raises(KeyError):
        main(["-v", "ask", ctx.repo, Q])


def case_cli_delete_unconfirmed(ctx):
    ctx.monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal: a piped "y" confirms nothing
    one_line_exit(ctx.capsys, ["delete", ctx.repo], "cannot be undone: pass --yes to confirm")
    with db.get_engine().connect() as conn:
        assert store.repo_id(conn, ctx.repo)


def case_fusion_weights(ctx):
    from grounding.config import reset_settings

    ctx.monkeypatch.setenv("GROUNDING_FUSION_WEIGHTS", "vector=x")
    reset_settings()
    raises(
        InvalidArgument, "GROUNDING_FUSION_WEIGHTS: fusion weight vector must be a number", lambda: search(ctx.repo, Q)
    )
    ctx.monkeypatch.delenv("GROUNDING_FUSION_WEIGHTS")
    reset_settings()  # the cached settings would keep the bad value past the case


def _reset() -> None:
    from grounding.config import reset_settings

    reset_settings()


def case_search_too_slow(ctx):
    from grounding.errors import SearchTimeout

    ctx.monkeypatch.setenv("GROUNDING_SEARCH_TIMEOUT_S", "0.001")  # 16 long globs compile for longer than that
    _reset()
    globs = tuple("/".join(["**", f"d{i}"] * 30) + "/*.py" for i in range(16))
    raises(SearchTimeout, "GROUNDING_SEARCH_TIMEOUT_S", lambda: search(ctx.repo, Q, filters=SearchFilters(paths=globs)))
    ctx.monkeypatch.delenv("GROUNDING_SEARCH_TIMEOUT_S")
    _reset()


def case_setting_not_a_number(ctx):
    ctx.monkeypatch.setenv("GROUNDING_CHUNK_TOKENS", "abc")
    _reset()
    one_line_exit(ctx.capsys, ["repos"], "GROUNDING_CHUNK_TOKENS must be a whole number, not 'abc'")
    ctx.monkeypatch.delenv("GROUNDING_CHUNK_TOKENS")
    _reset()


def case_role_prior(ctx):
    from grounding.config import reset_settings

    ctx.monkeypatch.setenv("GROUNDING_ROLE_PRIOR", "nan")
    reset_settings()
    raises(InvalidArgument, "GROUNDING_ROLE_PRIOR must be above 0 and at most 1", lambda: search(ctx.repo, Q))
    ctx.monkeypatch.delenv("GROUNDING_ROLE_PRIOR")
    reset_settings()


def case_rerank_candidates(ctx):
    from grounding.config import reset_settings

    ctx.monkeypatch.setenv("GROUNDING_RERANK_CANDIDATES", "0")  # reranking none of the hits returned none at all
    reset_settings()
    raises(InvalidArgument, "GROUNDING_RERANK_CANDIDATES must be at least 1", lambda: search(ctx.repo, Q))
    ctx.monkeypatch.delenv("GROUNDING_RERANK_CANDIDATES")
    reset_settings()


def case_filters_items(ctx):
    for kw in ({"languages": (1,)}, {"paths": [None]}):
        raises(InvalidArgument, "non-empty strings", lambda kw=kw: SearchFilters(**kw))
    # A list of strings is the tuple it stands for, and joins the inline filters.
    assert grounding.ask(ctx.repo, f"lang:python {Q}", filters=SearchFilters(paths=["*.py"])).citations


CASES = {
    "ask-k-negative": lambda c: raises(
        InvalidArgument, "between 1 and 200, not -1", lambda: grounding.ask(c.repo, Q, k=-1)
    ),
    "ask-k-zero": lambda c: raises(InvalidArgument, "between 1 and 200, not 0", lambda: grounding.ask(c.repo, Q, k=0)),
    "ask-k-string": lambda c: raises(InvalidArgument, "integer, not str '3'", lambda: grounding.ask(c.repo, Q, k="3")),
    "ask-question-none": lambda c: raises(InvalidArgument, "must be a string", lambda: grounding.ask(c.repo, None)),
    "ask-question-blank": lambda c: raises(InvalidArgument, "is empty", lambda: grounding.ask_stream(c.repo, "   ")),
    "ask-only-filters": lambda c: raises(
        InvalidArgument, "only filters", lambda: grounding.ask(c.repo, "path:src/** lang:python")
    ),
    "ask-no-repos": lambda c: raises(InvalidArgument, "at least one repository", lambda: grounding.ask([], Q)),
    "ask-filters-type": lambda c: raises(
        InvalidArgument, "SearchFilters", lambda: grounding.ask(c.repo, Q, filters={"paths": ["src"]})
    ),
    "ask-user-empty": lambda c: raises(
        InvalidArgument, "user must be a user name", lambda: grounding.ask(c.repo, Q, user="")
    ),
    "search-index-version": lambda c: raises(
        InvalidArgument, "index_version must be an integer", lambda: search(c.repo, Q, index_version="x")
    ),
    "glob-bad-range": lambda c: raises(
        InvalidArgument, "not a valid glob", lambda: grounding.ask(c.repo, f"path:[z-a] {Q}")
    ),
    "glob-too-many": lambda c: raises(
        InvalidArgument,
        "at most 16 path patterns",
        lambda: grounding.ask(c.repo, Q + " " + " ".join(f"path:m{i}/*" for i in range(17))),
    ),
    "glob-too-long": lambda c: raises(
        InvalidArgument, "at most 256 characters", lambda: search(c.repo, Q, filters=SearchFilters(paths=("a" * 257,)))
    ),
    "search-too-slow": case_search_too_slow,
    "setting-not-a-number": case_setting_not_a_number,
    "filters-items": case_filters_items,
    "role-unknown": lambda c: raises(
        InvalidArgument,
        "unknown role 'tests'.*roles are source, test",
        lambda: grounding.ask(c.repo, f"role:tests {Q}"),
    ),
    "fusion-weights": case_fusion_weights,
    "role-prior": case_role_prior,
    "rerank-candidates": case_rerank_candidates,
    "backend-type": lambda c: raises(
        GeneratorUnavailable, "backend must be", lambda: grounding.ask(c.repo, Q, backend=1)
    ),
    "search-mode": lambda c: raises(
        InvalidArgument, "hybrid, vector or lexical", lambda: search(c.repo, Q, mode="fuzzy")
    ),
    "unknown-repo": lambda c: raises(
        RepoNotFound, "not ingested; run `grounding ingest", lambda: grounding.ask("nope", Q)
    ),
    "only-ingest-failed": case_only_ingest_failed,
    "name-traversal": lambda c: raises(
        InvalidArgument, "not a valid repository name", lambda: ingest("file:///nowhere.git", name="../../x")
    ),
    "name-long": lambda c: raises(
        InvalidArgument, "not a valid repository name", lambda: ingest("/tmp", name="x" * 5000)
    ),
    "name-control": lambda c: [
        raises(InvalidArgument, "not a valid repository name", lambda n=n: ingest("/tmp", name=n))
        for n in ("a\0b", "a\x1bb")
    ],
    "name-derived": lambda c: raises(
        InvalidArgument,
        "not a valid repository name",
        lambda: ingest(str(c.tmp_path / "src"), name="billing~eval-payroll"),
    ),
    "url-scheme": lambda c: raises(
        InvalidArgument, "scheme 'ftp' are not fetched", lambda: ingest("ftp://host/x.git", name="x")
    ),
    "url-query": lambda c: raises(
        InvalidArgument, "query or fragment", lambda: ingest("https://host/x.git?access_token=abc", name="x")
    ),
    "url-option": lambda c: raises(InvalidArgument, "not a git URL", lambda: ingest("-oProxyCommand@host:y", name="x")),
    "ref-option": lambda c: raises(
        InvalidArgument, "not a git ref", lambda: ingest("file:///x.git", name="x", ref="--upload-pack=touch /tmp/x")
    ),
    "url-credentials-failing": case_url_credentials,
    "repoint": case_repoint,
    "non-utf8-name": case_non_utf8_name,
    "dead-db-mid-ingest": case_dead_db,
    "deleted-before-refresh": case_deleted_before_refresh,
    "prefix-outside": lambda c: raises(
        InvalidArgument, "not a path inside", lambda: completion.prefix_at(c.repo, "../other/x.py", None)
    ),
    "prefix-not-indexed": lambda c: raises(
        SourceNotFound, "not a file that repository", lambda: completion.prefix_at(c.repo, ".env", None)
    ),
    "complete-tokens": case_complete_tokens,
    "cli-user-empty": lambda c: one_line_exit(c.capsys, ["ask", c.repo, Q, "--user", ""], "user must be a user name"),
    "cli-complete-line": lambda c: one_line_exit(
        c.capsys, ["complete", c.repo, "a.py:notanumber"], "not PATH or PATH:LINE"
    ),
    "cli-delete-unconfirmed": case_cli_delete_unconfirmed,
    "cli-eval-k-zero": lambda c: one_line_exit(c.capsys, ["eval", c.repo, "-k", "0"], "k must be between 1 and 200"),
    "cli-ui-public": lambda c: one_line_exit(
        c.capsys, ["ui", "--address", "0.0.0.0", "--user", "alice", "--headless"], "on this machine only"
    ),
    "cli-unexpected": case_cli_unexpected,
}


def test_every_row_of_the_table_has_a_case_and_every_case_a_row():
    assert ROW.findall(TABLE.read_text()) == list(CASES)


class Context:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, repo, hashing, tmp_path, capsys):
    breakage = pytest.MonkeyPatch()  # what a case breaks on purpose, undone before the last check
    try:
        CASES[case](Context(repo=repo, hashing=hashing, tmp_path=tmp_path, capsys=capsys, monkeypatch=breakage))
    finally:
        breakage.undo()
    assert grounding.ask(repo, Q, k=1).citations, "nothing was lost: the repository still answers"
