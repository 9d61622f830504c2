"""A citation's listing: the file's own line numbers, the cited lines marked, context read from the stored file."""

from __future__ import annotations

import dataclasses
import re

import pytest

from grounding.answer.listing import ListingLine, listing, listing_html, listing_lines
from grounding.errors import AccessDenied, InvalidArgument
from grounding.records import Citation
from tests.conftest import git, git_repo, write_tree

BODY = "\n".join(f"    total += {i}" for i in range(12))
SOURCE = f'"""A module."""\n\nimport os\n\n\ndef first():\n    total = 0\n{BODY}\n    return total\n\n\ndef second():\n    return first() + 1\n'


@pytest.fixture
def ingested(engine, repo_name, hashing, tmp_path):
    from grounding.index.ingest import ingest

    src = git_repo(write_tree(tmp_path / "src", {"calc.py": SOURCE}))
    ingest(str(src), name=repo_name, embedder=hashing)
    return src


def cited(repo: str, symbol: str, *, k: int = 5) -> Citation:
    from grounding import ask

    found = [c for c in ask(repo, f"where is {symbol} defined", k=k).citations if c.symbol == symbol]
    assert found, f"{symbol} is cited"
    return found[0]


def test_the_listing_numbers_lines_as_the_file_and_adds_its_real_neighbours(ingested, repo_name):
    file_lines = SOURCE.split("\n")
    c = cited(repo_name, "second")
    lines = listing(c, context=3)
    assert [ln.number for ln in lines if ln.cited] == list(range(c.start_line, c.end_line + 1))
    assert lines[0].number == c.start_line - 3 and not lines[0].cited, "three lines of context above"
    for ln in lines:
        assert ln.text == file_lines[ln.number - 1], f"line {ln.number} is the file's line {ln.number}"
    assert lines[-1].number <= len(file_lines), "nothing invented past the end of the file"
    assert listing(c, context=0) == tuple(ln for ln in lines if ln.cited)


def test_a_file_changed_since_the_citation_gets_no_context_from_the_new_version(ingested, repo_name, hashing):
    from grounding.index.ingest import ingest

    c = cited(repo_name, "second")
    (ingested / "calc.py").write_text("# a new first line\n" + SOURCE)
    git(ingested, "commit", "-qam", "shift every line down")
    ingest(str(ingested), name=repo_name, embedder=hashing)
    assert all(ln.cited for ln in listing(c)), "the old commit's lines alone"
    uncommitted = dataclasses.replace(c, commit=None)  # a path ingest has no commit: the lines themselves decide
    assert all(ln.cited for ln in listing(uncommitted))


def test_the_listing_asks_access_first_and_refuses_bad_input(ingested, repo_name):
    from grounding.access import grant

    c = cited(repo_name, "first")
    with pytest.raises(AccessDenied):
        listing(c, user="mallory")
    grant("user:alice", repo_name)
    assert listing(c, user="alice")
    for bad in ({"citation": "calc.py:1-3"}, {"citation": c, "context": -1}, {"citation": c, "context": 1000}):
        with pytest.raises(InvalidArgument):
            listing(bad.pop("citation"), **bad)
    with pytest.raises(InvalidArgument):
        listing(dataclasses.replace(c, repo="../etc"))


def test_context_stops_where_the_stored_file_does_and_gaps_are_blank():
    c = Citation("r", "a.py", 5, 6, None, 1.0, "def f():\n    pass", "f", "function", "python")

    @dataclasses.dataclass
    class Span:
        start_line: int
        text: str

    spans = [Span(1, "import os"), Span(5, "def f():\n    pass")]  # lines 2-4 are between chunks
    lines = listing_lines(c, spans, context=3)
    assert [(ln.number, ln.text, ln.cited) for ln in lines] == [
        (2, "", False), (3, "", False), (4, "", False), (5, "def f():", True), (6, "    pass", True)
    ], "blank lines between chunks, none after the last stored line"
    moved = [Span(1, "import os"), Span(5, "def g():\n    pass")]
    assert all(ln.cited for ln in listing_lines(c, moved)), "stored lines that differ: no context"


def test_the_html_escapes_the_code_and_marks_the_cited_rows():
    lines = (
        ListingLine(41, "x = 1", False),
        ListingLine(42, "s = '<script>alert(1)</script>'", True),
        ListingLine(43, '"""two', True),
        ListingLine(44, 'lines"""', True),
        ListingLine(45, "", False),
    )
    html = listing_html(lines, "python")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert re.findall(r'data-line="(\d+)"', html) == ["41", "42", "43", "44", "45"]
    assert re.findall(r'data-line="(\d+)" data-cited', html) == ["42", "43", "44"]
    assert "<script" not in listing_html(lines, "no-such-language")
