"""Salient span masking for code, and random masking as its ablation (pure: text and tokens in, masks out).

REALM masks named entities and dates, spans whose prediction needs world knowledge. In a codebase
the knowledge lives in definitions: a name defined in *another* chunk (a function, class or method
the chunker found with tree-sitter) can only be predicted at a call site by reading that
definition. So a salient span is an identifier node of the chunk's syntax tree whose name is
defined elsewhere in the repository. Every occurrence of the chosen name in the example is masked,
or the reader would copy it from the next line instead of retrieving.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from grounding.index.languages import SYNTAX_LANGUAGES

MIN_NAME_CHARS = 3  # `f`, `x`, `id` are everywhere and defined everywhere: nothing to retrieve
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SalientSpan:
    """An occurrence of a name defined elsewhere: character offsets into the example's text."""

    start: int
    end: int
    name: str


def distinctive(name: str) -> bool:
    """A name that says which definition it means: not a dunder every class has, not `f` or `id`."""
    return len(name) >= MIN_NAME_CHARS and not (name.startswith("__") and name.endswith("__"))


def defined_names(symbols: Iterable[tuple[int, str | None]]) -> dict[str, frozenset[int]]:
    """name -> ids of the chunks defining it, from the chunks' qualified symbols (`Session.request`)."""
    found: dict[str, set[int]] = {}
    for chunk_id, symbol in symbols:
        if not symbol:
            continue
        name = symbol.rsplit(".", 1)[-1]
        if distinctive(name):
            found.setdefault(name, set()).add(chunk_id)
    return {name: frozenset(ids) for name, ids in found.items()}


@functools.cache
def _parser(language: str):
    import tree_sitter_language_pack as tslp

    return tslp.get_parser(SYNTAX_LANGUAGES[language])


def identifier_spans(text: str, language: str) -> list[tuple[int, int]]:
    """Character spans of the identifiers in `text`: tree-sitter identifier nodes where the language has
    a grammar (so strings and comments do not count), identifier-shaped words otherwise."""
    if language not in SYNTAX_LANGUAGES or language == "markdown":
        return [m.span() for m in _WORD.finditer(text)]
    data = text.encode("utf-8")
    tree = _parser(language).parse(data)
    spans: list[tuple[int, int]] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.child_count == 0:
            if "identifier" in node.type or node.type in ("constant", "name"):
                spans.append((node.start_byte, node.end_byte))
        else:
            stack.extend(node.children)
    spans.sort()
    if len(data) == len(text):  # ASCII: bytes are characters
        return spans
    offsets = _byte_to_char(text)
    return [(offsets[s], offsets[e]) for s, e in spans]


def _byte_to_char(text: str) -> list[int]:
    out = []
    for i, ch in enumerate(text):
        out.extend([i] * len(ch.encode("utf-8")))
    out.append(len(text))
    return out


def salient_spans(
    text: str,
    language: str,
    *,
    chunk_id: int,
    definitions: Mapping[str, frozenset[int]],
    own: frozenset[int] = frozenset(),
) -> list[SalientSpan]:
    """Identifiers of `text` whose name is defined in a chunk other than this one (and those in `own`)."""
    out = []
    for start, end in identifier_spans(text, language):
        name = text[start:end]
        defining = definitions.get(name)
        if defining and defining - own - {chunk_id}:
            out.append(SalientSpan(start, end, name))
    return out


def salient_span_mask(
    offsets: Sequence[tuple[int, int]], spans: Sequence[SalientSpan], rng: random.Random
) -> list[bool]:
    """Mask the tokens of one salient name, every occurrence of it; `offsets` are the tokens' char spans.

    Returns a mask over tokens, all False when no salient span falls inside the (truncated) tokens.
    """
    return choose_salient(offsets, spans, rng)[0]


def choose_salient(
    offsets: Sequence[tuple[int, int]], spans: Sequence[SalientSpan], rng: random.Random
) -> tuple[list[bool], str | None]:
    """salient_span_mask's mask, and the name it masks (None when nothing is masked)."""
    end_of_tokens = max((e for _, e in offsets), default=0)
    inside = [s for s in spans if s.end <= end_of_tokens]
    if not inside:
        return [False] * len(offsets), None
    name = rng.choice(inside).name
    chosen = [(s.start, s.end) for s in inside if s.name == name]
    return [any(ts < se and te > ss for ss, se in chosen) and te > ts for ts, te in offsets], name


def random_mask(offsets: Sequence[tuple[int, int]], rng: random.Random, *, rate: float = 0.15) -> list[bool]:
    """BERT's ablation baseline: each token masked with probability `rate`, at least one."""
    mask = [rng.random() < rate and te > ts for ts, te in offsets]
    if not any(mask) and offsets:
        mask[rng.randrange(len(offsets))] = True
    return mask
