"""Sharper retrieval: filters inside every ranking, inline filters, merged citations, split definitions joined."""

from __future__ import annotations

import ast
import re
import uuid

import pytest
import sqlalchemy as sa

from grounding import store
from grounding.errors import InvalidArgument
from grounding.index.embed import HashingEmbedder
from grounding.index.ingest import ingest
from grounding.records import Citation, Hit
from grounding.search.retrieve import (
    EXPAND_MAX_LINES,
    SearchFilters,
    chunk_filter,
    glob_to_regex,
    join_parts,
    merge_hits,
    parse_query,
    search,
    with_inline_filters,
)
from grounding.store import ChunkSpan
from tests.conftest import copy_tree, drop_repos, module_environment

COOKIE_QUESTION = "extract cookies into the cookie jar of a session"
BIG_FUNCTION_LINES = 600
NEEDLE_LINE = 300  # where `needle_marker` sits in gen/big.py


def _go(package: str, names: list[str]) -> str:
    return f"package {package}\n\n" + "\n".join(
        f"// {n} follows a redirect for the session.\n"
        f"func {n}(session *Session, url string) error {{\n"
        f"\tredirect := session.Resolve(url)\n\treturn session.Send(redirect)\n}}\n"
        for n in names
    )


def _markdown(title: str, topics: int) -> str:
    return f"# {title}\n\n" + "\n".join(
        f"## Session topic {i}\n\nA session follows each redirect of topic {i}.\n"
        "The session resolves the location, then sends the request again.\n"
        for i in range(topics)
    )


def _big_function() -> str:
    body = [f"    row_{i:04d} = compute({i}, scale)" for i in range(1, BIG_FUNCTION_LINES)]
    body[NEEDLE_LINE - 2] = "    needle_marker = locate_the_needle(scale)"
    return "def build_table(scale):\n" + "\n".join(body) + "\n    return locals()\n"


@pytest.fixture(scope="module")
def tree(database_url, tmp_path_factory):
    """requests plus Go, Markdown, shell and one very long Python function, ingested with small chunks."""
    env = module_environment(
        GROUNDING_DATABASE_URL=database_url,
        GROUNDING_HOME=str(tmp_path_factory.mktemp("home")),
        GROUNDING_CHUNK_TOKENS="120",  # small enough that long functions are split into fragments
    )
    with env:
        yield from _mixed_tree(tmp_path_factory)


def _mixed_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "mixed"
    copy_tree("requests", root / "requests")
    files = {
        "cmd/server/main.go": _go("main", [f"Handle{i}" for i in range(6)]),
        "pkg/util/strings.go": _go("util", [f"Trim{i}" for i in range(4)]),
        "docs/guide.md": _markdown("Sessions guide", 8),
        "docs/api/reference.md": _markdown("API reference", 6),
        "scripts/release.sh": (
            "#!/bin/sh\nset -e\n# release the session library\npython -m build\ntwine upload dist/*\n"
        ),
        "gen/big.py": _big_function(),
    }
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    name = f"filters-{uuid.uuid4().hex[:6]}"
    ingest(str(root), name=name, embedder=HashingEmbedder(64))
    yield name, root
    drop_repos(name)


@pytest.fixture
def repo(tree, database_url):
    return tree


def lines_of(root, c: Citation) -> str:
    return "\n".join((root / c.path).read_text().split("\n")[c.start_line - 1 : c.end_line])


# --- globs (pure, and the same in Postgres) ------------------------------------------------------

GLOBS = [
    ("src/**/*.py", "src/a.py", True),
    ("src/**/*.py", "src/x/y/a.py", True),
    ("src/**/*.py", "lib/src/a.py", False),
    ("src/**/*.py", "src/a.pyc", False),
    ("*.go", "main.go", True),
    ("*.go", "cmd/server/main.go", True),
    ("*.go", "cmd/server/main.gox", False),
    ("docs/*", "docs/guide.md", True),
    ("docs/*", "docs/api/reference.md", True),  # docs/api matches, and with it all it holds (as in .gitignore)
    ("docs/*", "src/docs/guide.md", False),  # a slash anchors the pattern at the root
    ("docs/", "src/docs/guide.md", True),  # a directory name alone matches at any depth
    ("docs/*.md", "docs/api/reference.md", False),  # `*` stays within one segment
    ("docs/**/*.md", "docs/guide.md", True),
    ("**/main.go", "cmd/server/main.go", True),
    ("cmd/**", "cmd/server/main.go", True),
    ("/setup.py", "setup.py", True),
    ("/setup.py", "pkg/setup.py", False),
    ("test_?.py", "tests/test_a.py", True),
    ("test_?.py", "tests/test_ab.py", False),
    ("a[!b]c.py", "acc.py", True),
    ("a[!b]c.py", "abc.py", False),
    ("file[12].txt", "file2.txt", True),
    ("v1.0/*.py", "v1x0/a.py", False),  # a dot is a dot
    ("a+b(c).py", "a+b(c).py", True),
    ("data_$x.py", "data_$x.py", True),
]


@pytest.mark.parametrize("pattern, path, expected", GLOBS)
def test_glob_semantics(pattern, path, expected):
    assert bool(re.match(glob_to_regex(pattern), path)) is expected


def test_globs_mean_the_same_in_postgres(engine):
    with engine.connect() as conn:
        got = [
            conn.execute(sa.text("SELECT CAST(:p AS text) ~ :r"), {"p": path, "r": glob_to_regex(pattern)}).scalar()
            for pattern, path, _ in GLOBS
        ]
    assert got == [expected for _, _, expected in GLOBS]


def test_globs_postgres_would_burn_cpu_on_are_refused_and_repeated_any_depths_count_once():
    from grounding.search import filters as f

    assert glob_to_regex("a/**/**/**/b") == glob_to_regex("a/**/b") and glob_to_regex("**/**/x") == glob_to_regex("x")
    assert glob_to_regex("a**/**/b") != glob_to_regex("a**/b"), "`a**` is not a whole segment"
    assert glob_to_regex("**/" * 1000 + "x").count("(?:.*/)?") == 1  # compiled in Postgres: 23 s before
    SearchFilters(paths=("*.py",) * 8, exclude_paths=("t/*",) * 8)
    with pytest.raises(InvalidArgument, match=f"at most {f.MAX_PATH_PATTERNS} path patterns"):
        SearchFilters(paths=("*.py",) * 9, exclude_paths=("t/*",) * 8)  # 50 of them: 1.3 s per row read
    SearchFilters(paths=("a" * f.MAX_PATTERN_CHARS,))
    with pytest.raises(InvalidArgument, match=f"at most {f.MAX_PATTERN_CHARS} characters"):
        SearchFilters(exclude_paths=("a" * (f.MAX_PATTERN_CHARS + 1),))
    with pytest.raises(InvalidArgument, match="path patterns"):  # written inline in a question, too
        with_inline_filters("greet " + " ".join(f"path:src/m{i}/*" for i in range(17)), None)


def test_empty_glob_and_bare_strings_are_refused():
    with pytest.raises(ValueError, match="empty path pattern"):
        glob_to_regex(" / ")
    with pytest.raises(InvalidArgument, match="takes a tuple of strings"):
        SearchFilters(paths="*.py")


# --- inline filters ------------------------------------------------------------------------------


def test_parse_query():
    question, filters = parse_query(
        'how are redirects followed path:src/**/*.py lang:py,go  -path:"my tests/*" kind:function url:http://x'
    )
    assert question == "how are redirects followed url:http://x"
    assert filters == SearchFilters(
        paths=("src/**/*.py",), languages=("py", "go"), kinds=("function",), exclude_paths=("my tests/*",)
    )
    assert parse_query("plain question") == ("plain question", SearchFilters())
    assert not parse_query("plain question")[1]
    _, repeated = parse_query("path:a/* path:b/* language:Go -path:*_test.go x")
    assert repeated.paths == ("a/*", "b/*") and repeated.languages == ("Go",)
    assert repeated.exclude_paths == ("*_test.go",)
    assert parse_query("path: alone")[1] == SearchFilters(), "an empty value is not a filter"


# --- filters inside every ranking ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["vector", "lexical", "hybrid"])
def test_a_selective_filter_still_returns_k_hits(repo, mode, monkeypatch):
    from grounding.config import reset_settings

    name, _ = repo
    monkeypatch.setenv("GROUNDING_ROLE_PRIOR", "1")  # the tree's tests and docs keep their places
    reset_settings()
    # Unfiltered, Go code is nowhere near the top: cutting the fused list afterwards would leave nothing.
    unfiltered = search(name, COOKIE_QUESTION, k=15, mode=mode, merge=False, expand=False)
    assert len(unfiltered) == 15 and not [h for h in unfiltered if h.citation.language == "go"]
    hits = search(
        name, COOKIE_QUESTION, k=5, mode=mode, filters=SearchFilters(languages=("go",)), merge=False, expand=False
    )
    assert len(hits) == 5 and {h.citation.language for h in hits} == {"go"}
    assert {h.citation.path for h in hits} <= {"cmd/server/main.go", "pkg/util/strings.go"}


def test_the_vector_index_scan_keeps_walking_until_k_rows_pass_the_filter(repo, engine):
    name, _ = repo
    with engine.begin() as conn:
        repo_id = store.repo_id(conn, name)
        version = store.active_index_version(conn, repo_id)
        # Make the planner walk the HNSW graph: on a table this small it would rather sort every row.
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        hits = store.hybrid_search(
            conn,
            repo_id,
            version,
            query_vector=HashingEmbedder(64).embed_batch([COOKIE_QUESTION])[0],
            terms=[],
            fragments=[],
            candidates=5,
            rrf_k=5,
            k=5,
            use_lexical=False,
            use_trigram=False,
            # gen/big.py is far from cookies: without an iterative scan the first ef_search
            # neighbours hold none of it and the filter leaves nothing (measured: 0 hits).
            filters=chunk_filter(SearchFilters(paths=("gen/**",))),
        )
    assert len(hits) == 5 and {h.citation.path for h in hits} == {"gen/big.py"}


@pytest.mark.parametrize(
    "filters, ok",
    [
        (SearchFilters(paths=("cmd/**/*.go",)), lambda c: c.path == "cmd/server/main.go"),
        (SearchFilters(paths=("**/*.md",)), lambda c: c.path.endswith(".md")),
        (SearchFilters(paths=("docs/api/*",)), lambda c: c.path == "docs/api/reference.md"),
        (SearchFilters(paths=("*.sh", "pkg/")), lambda c: c.path in ("scripts/release.sh", "pkg/util/strings.go")),
        (SearchFilters(languages=("markdown",)), lambda c: c.language == "markdown"),
        (SearchFilters(languages=("golang", "md")), lambda c: c.language in ("go", "markdown")),  # aliases
        (SearchFilters(kinds=("class",)), lambda c: c.kind == "class"),
        (SearchFilters(kinds=("Function",)), lambda c: c.kind == "function"),
        (SearchFilters(exclude_paths=("requests/**",)), lambda c: not c.path.startswith("requests/")),
        (SearchFilters(exclude_paths=("*.py", "*.md")), lambda c: c.language in ("go", "shell")),
        (
            SearchFilters(paths=("requests/*.py",), kinds=("function",), exclude_paths=("requests/utils.py",)),
            lambda c: c.path.startswith("requests/") and c.path != "requests/utils.py" and c.kind == "function",
        ),
    ],
)
@pytest.mark.parametrize("mode", ["vector", "lexical", "hybrid"])
def test_each_filter_in_each_mode(repo, filters, ok, mode):
    name, _ = repo
    question = "session redirect cookies request"
    hits = search(name, question, k=4, mode=mode, filters=filters, merge=False, expand=False)
    assert len(hits) == 4, [(h.citation.path, h.citation.kind) for h in hits]
    assert all(ok(h.citation) for h in hits), [(h.citation.path, h.citation.kind) for h in hits]


def test_the_tree_holds_what_the_filters_leave_out(repo, engine):
    """The filter tests above could pass on a tree that only holds what they keep; this one holds it all."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT DISTINCT f.language, c.kind FROM chunks c JOIN files f ON f.id = c.file_id "
                "JOIN repositories r ON r.id = c.repo_id WHERE r.name = :n"
            ),
            {"n": repo[0]},
        ).all()
    assert {lang for lang, _ in rows} >= {"python", "go", "markdown", "shell"}
    assert {kind for _, kind in rows} >= {"function", "method", "class", "section", "fragment", "lines"}


def test_inline_filters_drive_a_search(repo):
    name, _ = repo
    question, filters = parse_query("who sends the redirect lang:golang path:cmd/** -path:**/strings.go")
    hits = search(name, question, k=3, filters=filters)
    assert len(hits) == 3 and {h.citation.path for h in hits} == {"cmd/server/main.go"}


# --- merging citations (pure) -------------------------------------------------------------------


def hit(chunk_id: int, path: str, start: int, end: int, score: float, **ranks) -> Hit:
    text = "\n".join(f"{path}:{n}" for n in range(start, end + 1))
    citation = Citation("r", path, start, end, "c0", score, text, symbol=f"s{chunk_id}", kind="function")
    return Hit(chunk_id, citation, score, **ranks)


def span(h: Hit) -> tuple[str, int, int]:
    return h.citation.path, h.citation.start_line, h.citation.end_line


def test_merge_overlapping_and_touching_hits_of_one_file():
    hits = [
        hit(1, "a.py", 10, 20, 0.9, vector_rank=3),
        hit(2, "b.py", 10, 20, 0.8),
        hit(3, "a.py", 15, 30, 0.7, vector_rank=1, lexical_rank=4),  # overlaps 1
        hit(4, "a.py", 31, 35, 0.6),  # touches 3
        hit(5, "a.py", 37, 40, 0.5),  # a blank line apart: a separate citation
        hit(6, "b.py", 5, 12, 0.4),
    ]
    merged = merge_hits(hits)
    assert [span(h) for h in merged] == [("a.py", 10, 35), ("b.py", 5, 20), ("a.py", 37, 40)]
    first = merged[0]
    assert first.chunk_id == 1 and first.score == 0.9 and first.citation.score == 0.9
    assert (first.vector_rank, first.lexical_rank, first.trigram_rank) == (1, 4, None)
    assert first.citation.snippet == "\n".join(f"a.py:{n}" for n in range(10, 36)), "every line once, in order"
    assert merged[1].chunk_id == 2 and merged[1].citation.snippet.split("\n")[0] == "b.py:5"
    assert merged[2] == hits[4], "a hit that touches nothing is returned as it was"


def test_merge_is_transitive_and_keeps_the_best_position():
    hits = [hit(7, "x.go", 30, 40, 0.9), hit(8, "x.go", 10, 20, 0.5), hit(9, "x.go", 19, 31, 0.2)]
    (merged,) = merge_hits(hits)
    assert span(merged) == ("x.go", 10, 40) and merged.chunk_id == 7 and merged.score == 0.9
    assert merged.citation.snippet.split("\n") == [f"x.go:{n}" for n in range(10, 41)]


def test_merge_keeps_a_contained_hit_inside_and_other_files_apart():
    assert [span(h) for h in merge_hits([hit(1, "a.py", 1, 50, 1.0), hit(2, "a.py", 10, 12, 0.5)])] == [("a.py", 1, 50)]
    assert merge_hits([]) == []
    other_commit = hit(2, "a.py", 1, 5, 0.5)
    other_commit = Hit(2, Citation("r", "a.py", 1, 5, "c1", 0.5, other_commit.citation.snippet), 0.5)
    assert len(merge_hits([hit(1, "a.py", 1, 5, 1.0), other_commit])) == 2, "another commit is another file"


def test_merged_search_citations_never_overlap(repo):
    name, root = repo
    question = "resolve_redirects rebuild_auth should_strip_auth"
    unmerged = search(name, question, k=8, merge=False)
    assert _overlapping(unmerged), "the question was chosen for hits that overlap"
    hits = search(name, question, k=8)
    assert len(hits) == 8 and not _overlapping(hits)
    for h in hits:
        assert h.citation.snippet == lines_of(root, h.citation)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def _overlapping(hits: list[Hit]) -> list[tuple]:
    spans = sorted(span(h) for h in hits)
    return [(a, b) for a, b in zip(spans, spans[1:]) if a[0] == b[0] and b[1] <= a[2] + 1]


# --- joining the parts of a split definition ----------------------------------------------------


def parts_of(lines: list[str], spans: list[tuple[int, int]]) -> list[ChunkSpan]:
    """ChunkSpans cut from a list of lines, with the byte offsets chunking would give them."""
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line.encode()) + 1)
    return [
        ChunkSpan(100 + i, s, e, starts[s - 1], starts[e] - 1, "\n".join(lines[s - 1 : e]))
        for i, (s, e) in enumerate(spans)
    ]


def test_join_parts_across_touching_lines_and_blank_gaps_only():
    lines = [f"line {n}" for n in range(1, 41)]
    lines[9] = ""  # line 10 is blank: no chunk holds it
    lines[19] = "    "  # line 20 holds spaces: not provably empty
    parts = parts_of(lines, [(1, 5), (6, 9), (11, 19), (21, 30), (30, 40)])
    assert join_parts(101, parts) == (1, 19, "\n".join(lines[:19]))
    assert join_parts(103, parts) == (21, 40, "\n".join(lines[20:])), "a shared line is kept once"
    assert join_parts(999, parts) is None


def test_join_parts_stays_within_the_budget_around_the_hit():
    lines = [f"x{n}" for n in range(1, 101)]
    parts = parts_of(lines, [(s, s + 9) for s in range(1, 101, 10)])
    start, end, text = join_parts(105, parts, max_lines=30)
    assert (start, end) == (41, 70) and text == "\n".join(lines[40:70]), "grown on both sides of the hit"
    assert join_parts(100, parts, max_lines=30)[:2] == (1, 30)
    assert join_parts(105, parts, max_lines=5)[:2] == (51, 60), "the hit itself always stays"
    assert join_parts(105, parts, max_chars=80)[:2] == (41, 60), "parts of 39 characters: two fit"


def test_a_fragment_hit_is_widened_to_its_whole_function(repo):
    name, root = repo
    functions = {
        n.name: (n.lineno, n.end_lineno)
        for n in ast.walk(ast.parse((root / "requests/sessions.py").read_text()))
        if isinstance(n, ast.FunctionDef)
    }
    plain = search(name, "resolve_redirects", k=8, mode="lexical", merge=False, expand=False)
    fragment = next(h for h in plain if h.citation.symbol == "SessionRedirectMixin.resolve_redirects")
    assert fragment.citation.kind == "fragment"
    assert fragment.citation.end_line - fragment.citation.start_line < 40, "small chunks: the function is split"

    hits = search(name, "resolve_redirects", k=8, mode="lexical", merge=False)
    expanded = next(h for h in hits if h.chunk_id == fragment.chunk_id)
    c = expanded.citation
    assert (c.start_line, c.end_line) == functions["resolve_redirects"] == (186, 307)
    assert c.snippet == lines_of(root, c)
    assert all(h.citation.snippet == lines_of(root, h.citation) for h in hits)


def test_a_very_long_function_comes_back_as_a_window_around_the_hit(repo):
    name, root = repo
    hits = search(name, "needle_marker locate_the_needle", k=3, mode="lexical")
    top = hits[0].citation
    assert top.path == "gen/big.py" and top.kind == "fragment" and top.symbol == "build_table"
    assert top.start_line <= NEEDLE_LINE <= top.end_line
    assert 100 < top.end_line - top.start_line + 1 <= EXPAND_MAX_LINES < BIG_FUNCTION_LINES
    assert top.snippet == lines_of(root, top)
