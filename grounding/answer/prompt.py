"""Prompt packing and citation markers, pure: numbered evidence in, [n] markers checked against it.

Evidence block n of the prompt is Citation n of the answer, so every `[n]` a generator writes points
at a path, a line range and a commit. Markers are only read in prose: a `[1]` inside a code fence or
an inline code span is an index, not a citation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from grounding.records import Citation

MIN_TRUNCATED_LINES = 10  # a block cut shorter than this says too little to be worth its number

SYSTEM = (
    "You answer questions about a codebase. Use only the numbered evidence you are given: code read from "
    "the repository at the commit shown. After each claim, cite the evidence it rests on with its number "
    "in square brackets, like [1] or [2][3]. Never cite a number that is not in the evidence. If the "
    "evidence does not answer the question, say so."
)
INSTRUCTION = "Answer the question from the evidence above only, and cite [n] after each claim."


@dataclass(frozen=True)
class Prompt:
    """What a generator is given: instructions, the question with its numbered evidence, and that evidence."""

    system: str
    user: str
    citations_used: tuple[Citation, ...]  # block n of `user` is citations_used[n - 1]
    question: str = ""
    repos: tuple[str, ...] = ()  # the repositories asked, first first (RETRO completes with the first)


def approx_tokens(text: str) -> int:
    """A tokenizer-free token count: words and punctuation marks, close to a code BPE's count."""
    return len(_PIECE.findall(text))


_PIECE = re.compile(r"\w+|[^\w\s]")


def qualified(citations: Sequence[Citation]) -> bool:
    """True when the evidence spans several repositories, so a location must name its repository."""
    return len({c.repo for c in citations}) > 1


def where(citation: Citation, *, qualify: bool = False, commit: bool = False) -> str:
    """`path:start-end`, with `repo/` before it when qualified and `@commit` after it when asked."""
    at = f"@{citation.commit[:12]}" if commit and citation.commit else ""
    repo = f"{citation.repo}/" if qualify else ""
    return f"{repo}{citation.path}:{citation.start_line}-{citation.end_line}{at}"


def evidence_block(n: int, citation: Citation, *, qualify: bool = False) -> str:
    """`[n] path:start-end@commit (symbol)` and the code in a fence."""
    symbol = f" ({citation.symbol})" if citation.symbol else ""
    fence = "````" if "```" in citation.snippet else "```"  # a Markdown file's own fences stay inside
    return (
        f"[{n}] {where(citation, qualify=qualify, commit=True)}{symbol}\n"
        f"{fence}{citation.language or ''}\n{citation.snippet}\n{fence}"
    )


def truncate(citation: Citation, lines: int) -> Citation:
    """The citation cut to its first `lines` lines: its range and its snippet both shrink."""
    kept = citation.snippet.split("\n")[:lines]
    return dataclasses.replace(citation, end_line=citation.start_line + len(kept) - 1, snippet="\n".join(kept))


def build_prompt(
    question: str,
    citations: Sequence[Citation],
    *,
    budget_tokens: int,
    count_tokens: Callable[[str], int] = approx_tokens,
    repos: Sequence[str] = (),
) -> Prompt:
    """The prompt for `question`: evidence numbered in rank order, packed until `budget_tokens` is spent.

    The block that does not fit is cut by lines when at least MIN_TRUNCATED_LINES of it fit, else left
    out with everything ranked after it. The budget counts the system text and the whole user text.
    """
    qualify = qualified(citations)
    head = f"Question: {question.strip()}\n\nEvidence:"
    tail = f"Question: {question.strip()}\n{INSTRUCTION}"

    def user_text(blocks: list[str]) -> str:
        return "\n\n".join([head, *blocks, tail])

    def fits(blocks: list[str]) -> bool:
        return count_tokens(SYSTEM) + count_tokens(user_text(blocks)) <= budget_tokens

    blocks: list[str] = []
    used: list[Citation] = []
    for citation in citations:
        n = len(used) + 1
        block = evidence_block(n, citation, qualify=qualify)
        if fits([*blocks, block]):
            blocks.append(block)
            used.append(citation)
            continue
        lines = _lines_that_fit(citation, lambda c: fits([*blocks, evidence_block(n, c, qualify=qualify)]))
        if lines >= MIN_TRUNCATED_LINES:
            cut = truncate(citation, lines)
            blocks.append(evidence_block(n, cut, qualify=qualify))
            used.append(cut)
        break
    return Prompt(SYSTEM, user_text(blocks), tuple(used), question, tuple(repos) or _repos_of(citations))


def _lines_that_fit(citation: Citation, fits: Callable[[Citation], bool]) -> int:
    """The most leading lines of the citation whose block fits (binary search: counting is the cost)."""
    low, high = 0, citation.snippet.count("\n") + 1
    while low < high:
        mid = (low + high + 1) // 2
        if fits(truncate(citation, mid)):
            low = mid
        else:
            high = mid - 1
    return low


def _repos_of(citations: Sequence[Citation]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c.repo for c in citations))


# --- citation markers -------------------------------------------------------------------------------

_MARKERS = re.compile(r"([ \t]*)((?:\[\d+(?:[ \t]*,[ \t]*\d+)*\])+)")
_GROUP = re.compile(r"\[([^\]]*)\]")


def _marker_numbers(match: re.Match) -> list[list[int]]:
    return [[int(n) for n in group.split(",")] for group in _GROUP.findall(match.group(2))]


def _in_prose(line: str, fence: str, fn: Callable[[str], str]) -> tuple[str, str]:
    """`fn` applied to the prose of one line (outside fences and inline code); the open fence after it."""
    opened = _FENCE.match(line)
    if opened and not fence:
        return line, opened.group(1)
    if fence:  # only a run as long as the opening one closes it: ``` inside ```` is code
        closed = opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence)
        return line, "" if closed else fence
    parts = line.split("`")
    return "`".join(fn(p) if i % 2 == 0 else p for i, p in enumerate(parts)), fence


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")


def _rewrite_markers(segment: str, keep: Callable[[int], bool]) -> str:
    def replace(match: re.Match) -> str:
        if match.group(1) == "" and match.start(2) > 0 and _indexes(segment, match.start(2)):
            return match.group(0)
        groups = [[n for n in numbers if keep(n)] for numbers in _marker_numbers(match)]
        text = "".join(f"[{', '.join(map(str, g))}]" for g in groups if g)
        return match.group(1) + text if text else ""

    return _MARKERS.sub(replace, segment)


def _indexes(segment: str, start: int) -> bool:
    """True when the bracket at `start` follows a name or a call: `args[1]` indexes, it does not cite."""
    before = segment[start - 1]
    return before.isalnum() or before in "_)]"


def cited_numbers(text: str) -> list[int]:
    """The citation numbers the text's prose cites, each once, in the order they first appear."""
    seen: dict[int, None] = {}

    def keep(n: int) -> bool:
        seen.setdefault(n, None)
        return True

    def collect(segment: str) -> str:
        return _rewrite_markers(segment, keep)

    fence = ""
    for line in text.splitlines(keepends=True):
        _, fence = _in_prose(line, fence, collect)
    return list(seen)


def drop_invented(text: str, count: int) -> str:
    """The text without the markers that cite a number outside 1..count (a generator's inventions)."""
    marker_filter = MarkerFilter(count)
    return marker_filter.feed(text) + marker_filter.flush()


class MarkerFilter:
    """Drops invented markers from streamed text; a line with `[` is held back until it is complete.

    Only markers are ever removed, so the text before a line's first `[` goes out at once.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.invented: list[int] = []  # numbers dropped, for a warning
        self._line = ""  # the current line so far
        self._sent = 0  # how much of it has gone out
        self._fence = ""  # the run of backticks or tildes that opened the code block we are in

    def feed(self, delta: str) -> str:
        """The part of `delta` (with what was held back) that can go out now."""
        out: list[str] = []
        self._line += delta
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            out.append(self._finish(line + "\n"))
        held = self._line.find("[")
        safe = len(self._line) if held < 0 else held
        while held >= 0 and safe > self._sent and self._line[safe - 1] in " \t":
            safe -= 1  # the space before a dropped marker goes with it
        if self._line.lstrip().startswith(("`", "~")):
            safe = 0  # may open or close a fence: wait for the whole line
        if safe > self._sent:
            out.append(self._line[self._sent : safe])
            self._sent = safe
        return "".join(out)

    def flush(self) -> str:
        """What was held back at the end of the stream."""
        rest = self._finish(self._line) if self._line else ""
        self._line = ""
        return rest

    def _finish(self, line: str) -> str:
        cleaned, self._fence = _in_prose(line, self._fence, self._clean)
        rest = cleaned[self._sent :]
        self._sent = 0
        return rest

    def _keep(self, n: int) -> bool:
        if 1 <= n <= self.count:
            return True
        self.invented.append(n)
        return False

    def _clean(self, segment: str) -> str:
        return _rewrite_markers(segment, self._keep)


def looks_like_code(text: str) -> bool:
    """A code prefix to complete rather than a question: reads as code and does not ask anything."""
    stripped = text.strip()
    if not stripped or stripped.endswith("?"):
        return False
    if _CODE_START.search(text) or stripped.endswith((":", "(", "[", "{", ",", "=", ".", "->", "=>")):
        return True
    symbols = sum(stripped.count(c) for c in "()[]{}=;:.,<>")
    return "\n" in stripped and symbols / len(stripped) > 0.05


_CODE_START = re.compile(
    r"^[ \t]*(?:def |async def |class |import |from \S+ import|@\w|return\b|fn |func |function |"
    r"public |private |const |let |var |#include|package |use )",
    re.MULTILINE,
)
