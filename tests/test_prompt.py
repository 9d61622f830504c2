"""Prompt packing and citation markers: numbered evidence within a token budget, [n] read and checked."""

from __future__ import annotations

import re

import pytest

from grounding.answer.prompt import (
    MIN_TRUNCATED_LINES,
    MarkerFilter,
    approx_tokens,
    build_prompt,
    cited_numbers,
    drop_invented,
    looks_like_code,
)
from grounding.records import Citation
from tests.conftest import package_tree

SESSIONS = (package_tree("requests") / "sessions.py").read_text().split("\n")


def cite(start: int, end: int, *, repo: str = "requests", symbol: str | None = "Session.request") -> Citation:
    """A citation of real lines of requests/sessions.py."""
    snippet = "\n".join(SESSIONS[start - 1 : end])
    return Citation(repo, "sessions.py", start, end, "0123456789abcdef0123", 0.5, snippet, symbol, "method", "python")


EVIDENCE = [cite(100, 140), cite(200, 260, symbol=None), cite(300, 330), cite(400, 420)]


def prompt_tokens(prompt, count=approx_tokens) -> int:
    return count(prompt.system) + count(prompt.user)


def test_blocks_are_numbered_in_rank_order_with_location_commit_symbol_and_code():
    prompt = build_prompt("how does a session send a request?", EVIDENCE, budget_tokens=100_000)
    assert prompt.citations_used == tuple(EVIDENCE) and prompt.repos == ("requests",)
    headers = re.findall(r"^\[(\d+)\] (.*)$", prompt.user, re.MULTILINE)
    assert [int(n) for n, _ in headers] == [1, 2, 3, 4]
    assert headers[0][1] == "sessions.py:100-140@0123456789ab (Session.request)"
    assert headers[1][1] == "sessions.py:200-260@0123456789ab", "no symbol, no parentheses"
    block = prompt.user.split("[1] ", 1)[1].split("\n[2] ", 1)[0]
    assert block.split("\n", 1)[1].strip() == "```python\n" + EVIDENCE[0].snippet + "\n```"
    assert prompt.user.index("[3] ") < prompt.user.index("[4] ")
    assert "only" in prompt.system and "[1]" in prompt.system, "answer only from the evidence, cite [n]"
    assert prompt.user.rstrip().endswith("cite [n] after each claim.")
    assert "how does a session send a request?" in prompt.user


def test_several_repositories_name_the_repository_in_each_block():
    evidence = [cite(100, 110), cite(1, 5, repo="click", symbol=None)]
    prompt = build_prompt("q", evidence, budget_tokens=100_000, repos=["requests", "click"])
    assert "[1] requests/sessions.py:100-110@" in prompt.user and "[2] click/sessions.py:1-5@" in prompt.user
    assert prompt.repos == ("requests", "click")


@pytest.mark.parametrize("budget", [250, 400, 700, 1000, 1500, 3000])
def test_packing_stays_within_the_budget_and_keeps_rank_order(budget):
    prompt = build_prompt("how does a session send a request?", EVIDENCE, budget_tokens=budget)
    assert prompt_tokens(prompt) <= budget
    used = prompt.citations_used
    assert [c.start_line for c in used] == [c.start_line for c in EVIDENCE[: len(used)]], "a prefix of the ranking"
    # All but the last are whole; nothing else would have fitted whole.
    assert all(u == e for u, e in zip(used[:-1], EVIDENCE))
    if len(used) < len(EVIDENCE) and used and used[-1] == EVIDENCE[len(used) - 1]:
        bigger = build_prompt("how does a session send a request?", EVIDENCE[: len(used) + 1], budget_tokens=10**6)
        assert prompt_tokens(bigger) > budget


def test_the_block_that_does_not_fit_is_cut_by_lines():
    whole = build_prompt("q", EVIDENCE[:1], budget_tokens=10**6)
    budget = prompt_tokens(whole) + 200  # room for the first block and part of the 61-line second
    prompt = build_prompt("q", EVIDENCE, budget_tokens=budget)
    assert len(prompt.citations_used) == 2 and prompt_tokens(prompt) <= budget
    first, cut = prompt.citations_used
    assert first == EVIDENCE[0]
    kept = cut.end_line - cut.start_line + 1
    assert MIN_TRUNCATED_LINES <= kept < 61 and cut.start_line == 200
    assert cut.snippet == "\n".join(SESSIONS[199 : cut.end_line]), "the cut citation is still exact lines"
    assert f"[2] sessions.py:200-{cut.end_line}@" in prompt.user and "[3] " not in prompt.user
    # One line more would not have fitted: the cut is as long as the budget allows.
    assert prompt_tokens(build_prompt("q", [first, cite(200, cut.end_line + 1, symbol=None)], budget_tokens=10**6)) > (
        budget
    )


def test_a_block_is_dropped_when_fewer_than_ten_lines_fit():
    whole = build_prompt("q", EVIDENCE[:1], budget_tokens=10**6)
    prompt = build_prompt("q", EVIDENCE, budget_tokens=prompt_tokens(whole) + 30)
    assert prompt.citations_used == (EVIDENCE[0],) and "[2] " not in prompt.user


def test_the_model_tokenizer_counts_when_given():
    chars = len  # a counter that charges every character: far fewer lines fit
    prompt = build_prompt("q", EVIDENCE, budget_tokens=3000, count_tokens=chars)
    assert prompt_tokens(prompt, chars) <= 3000
    assert len(prompt.citations_used) < len(build_prompt("q", EVIDENCE, budget_tokens=3000).citations_used)


def test_cited_numbers_reads_prose_markers_only():
    text = (
        "Sessions send requests [1]. Redirects are followed [2][3], cookies kept [4, 2].\n"
        "Inline `headers[7]` and args[8] and f(x)[9] are indexes, not citations.\n"
        "```python\nfirst = items[5]\nx = [6]\n```\n"
        "[10] starts a line."
    )
    assert cited_numbers(text) == [1, 2, 3, 4, 10]
    assert cited_numbers("no markers at all") == []


def test_invented_markers_are_dropped_and_code_is_left_alone():
    text = "Sent by `Session.send` [1]. Invented [7]. Mixed [2, 9].\n```python\nx = [7]\n```\nEnd [2][8]."
    assert (
        drop_invented(text, 2) == "Sent by `Session.send` [1]. Invented. Mixed [2].\n```python\nx = [7]\n```\nEnd [2]."
    )
    assert drop_invented("nothing to drop [1]", 1) == "nothing to drop [1]"


def test_a_longer_fence_holds_shorter_ones():
    text = "Quoted [1]:\n````markdown\n```python\nx = [5]\n```\ny = [6]\n````\nAfter [5]."
    assert drop_invented(text, 1) == text.replace("After [5].", "After.")
    assert cited_numbers(text) == [1, 5]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_streaming_filter_gives_what_the_whole_text_gives(size):
    text = "A claim [1]. A guess [5].\n```\nk = [5]\n```\nTwo [1, 2] and `x[9]` [3]\n"
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    markers = MarkerFilter(2)
    out = "".join(markers.feed(p) for p in pieces) + markers.flush()
    assert out == drop_invented(text, 2) == "A claim [1]. A guess.\n```\nk = [5]\n```\nTwo [1, 2] and `x[9]`\n"
    assert sorted(markers.invented) == [3, 5]


def test_the_streaming_filter_does_not_hold_back_text_without_brackets():
    markers = MarkerFilter(1)
    assert markers.feed("The answer is ") == "The answer is "
    assert markers.feed("in sessions.py [") == "in sessions.py"  # the space may go with a dropped marker
    assert markers.feed("1] and more") == ""  # held until the line ends
    assert markers.feed("\n") == " [1] and more\n"


def test_looks_like_code():
    assert looks_like_code("def merge_setting(request_setting, session_setting):\n    ")
    assert looks_like_code("import os\nfrom pathlib import Path\n")
    assert looks_like_code("session = requests.Session(")
    assert not looks_like_code("how does a session follow redirects?")
    assert not looks_like_code("where is the default user agent built")
