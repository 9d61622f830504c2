"""The extractive generator: no model, so no answer is written; it shows the most relevant code, ranked.

It never phrases a ranking as an answer. It says what it is (the code search ranked highest for the
question, no model read it), then lists each piece with why it was chosen (the question's words it
holds, or that it was found by meaning alone), quotes the top piece's lines that share most words with
the question, and puts tests, docs and examples under their own heading; every item carries its [n].
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

from grounding.answer.generate.base import Generator
from grounding.answer.prompt import Prompt, qualified, where
from grounding.records import Citation

QUOTE_LINES = 8  # the longest quotation: enough for a condition and its branch, short enough to read
MAX_TERMS_SHOWN = 3


def stem(term: str) -> str:
    """A crude stem, so that a question's `parsed` meets the code's `parse` and `redirects` meets `redirect`."""
    for suffix in ("ing", "ed", "es", "s", "e"):
        if term.endswith(suffix) and len(term) - len(suffix) >= 3:
            return term[: -len(suffix)]
    return term


def terms(text: str) -> set[str]:
    """The stemmed identifier pieces of a line of code or of a question."""
    from grounding.search.retrieve import identifier_terms

    return {stem(t) for t in identifier_terms(text).split() if len(t) > 1}


def question_terms(question: str) -> dict[str, str]:
    """The question's search terms (stop words dropped): stem -> the word as asked, in order."""
    from grounding.search.retrieve import query_terms

    found: dict[str, str] = {}
    for term in query_terms(question):
        found.setdefault(stem(term), term)
    return found


def best_lines(snippet: str, words: Sequence[str], *, width: int = QUOTE_LINES) -> tuple[int, int]:
    """The 0-based [start, end) of at most `width` lines to quote: from the first line of the window
    sharing most terms with the question's `words`, on for `width` lines so the statement reads whole.

    Ties go to the earliest window; with no shared term it is the snippet's start (the signature).
    """
    lines = snippet.split("\n")
    wanted_set = {stem(w) for w in words}
    scores = [len(terms(line) & wanted_set) for line in lines]
    width = min(width, len(lines))
    best, best_score = 0, 0
    for start in range(len(lines) - width + 1):
        score = sum(scores[start : start + width])
        if score > best_score:
            best, best_score = start, score
    if best_score > 0:
        best = next(i for i in range(best, best + width) if scores[i])
    end = min(best + width, len(lines))
    while end > best + 1 and not lines[end - 1].strip():
        end -= 1
    return best, end


def _what(citation: Citation) -> str:
    """`the method `Session.send``, `part of `Session.send``, or nothing for lines outside any definition."""
    if not citation.symbol:
        return ""
    if citation.kind == "fragment":  # a piece of a definition too long for one chunk
        return f"part of `{citation.symbol}`"
    kind = f"the {citation.kind} " if citation.kind and citation.kind not in ("lines", "block") else ""
    return f"{kind}`{citation.symbol}`"


def _mentions(found: set[str], wanted: dict[str, str]) -> list[str]:
    """The question's words (as asked) whose stems are in `found`, the first few."""
    return [word for t, word in wanted.items() if t in found][:MAX_TERMS_SHOWN]


def _term_list(found: Sequence[str]) -> str:
    return ", ".join(f"`{t}`" for t in found)


HEADER = "No model wrote this: the code{scope} most relevant to the question, as search ranked it."
HOW_TO_ANSWER = "Set GROUNDING_GENERATOR (hf, openai) for a written answer."


def extractive_lines(prompt: Prompt) -> list[str]:
    """The listing's lines: a header saying what it is, then each piece of evidence with its [n] and why.

    Bullets, not a numbered list: Markdown renumbers a list, and the [n] is the rank.
    """
    citations = prompt.citations_used
    if not citations:
        asked = " or ".join(repr(r) for r in prompt.repos) or "the repository"
        return [f"No code in {asked} matches this question."]
    wanted = question_terms(prompt.question)
    qualify = qualified(citations)
    scope = f" in {', '.join(f'`{r}`' for r in prompt.repos)}" if prompt.repos else ""
    out = [HEADER.format(scope=scope), ""]
    top = citations[0]
    out.append(f"- `{where(top, qualify=qualify)}` [1]{_chosen(top, wanted)}")
    start, end = best_lines(top.snippet, list(wanted.values()))
    quoted = top.snippet.split("\n")[start:end]
    first, last = top.start_line + start, top.start_line + end - 1
    lines = f"Lines {first}-{last}" if last > first else f"Line {first}"
    shared = _mentions(set().union(*(terms(line) for line in quoted)), wanted)
    why = f", which mention {_term_list(shared)}" if shared else ""
    fence = "````" if any("```" in line for line in quoted) else "```"
    path = f"{top.repo}/{top.path}" if qualify else top.path
    out += ["", f"{lines} of `{path}` [1]{why}:", f"{fence}{top.language or ''}", *quoted, fence]
    # The rest, in rank order: implementation first, then tests, docs and examples under their own heading.
    rest = list(enumerate(citations[1:], 2))
    for heading, group in (
        ("", [(n, c) for n, c in rest if not c.role_tag]),
        ("Tests, docs and examples:", [(n, c) for n, c in rest if c.role_tag]),
    ):
        if group:
            out += ["", heading] if heading else [""]
        for n, c in group:
            out.append(f"- `{where(c, qualify=qualify)}` [{n}]{c.role_tag}{_chosen(c, wanted)}")
    return [*out, "", HOW_TO_ANSWER]


def _chosen(citation: Citation, wanted: dict[str, str]) -> str:
    """`: the method `X`, which mentions `a`, `b`` or `: ..., found by meaning (none of the question's words)`."""
    what = _what(citation)
    mentions = _mentions_clause(citation, wanted) or "found by meaning alone (it holds none of the question's words)"
    return ": " + ", ".join(x for x in (what, mentions) if x)


def _mentions_clause(citation: Citation, wanted: dict[str, str]) -> str:
    found = _mentions(terms(citation.snippet) | terms(citation.symbol or ""), wanted)
    return f"which mentions {_term_list(found)}" if found else ""


class ExtractiveGenerator(Generator):
    """No model: the evidence ranked, why each piece was chosen, and the top one's lines that match, each with its [n]."""

    name = "extractive"

    def prompt_budget(self, budget: int) -> int:
        return sys.maxsize  # no model reads the prompt: all the evidence is kept, and cited

    def stream(self, prompt: Prompt) -> Iterator[str]:
        lines = extractive_lines(prompt)
        for i, line in enumerate(lines):
            yield line + ("\n" if i < len(lines) - 1 else "")
