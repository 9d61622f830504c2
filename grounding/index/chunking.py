"""Syntax-aware chunking, pure: (path, bytes, language) -> chunks that follow definitions within a token budget.

The tree is cut into *atoms*: a definition (function, method, class, section) that fits the budget is
one atom; a node that does not fit is opened and its children become atoms, carrying the split
definition as their owner. Consecutive non-definition atoms of one owner are then merged up to the
budget, and comments that touch a definition are attached to it. Each chunk keeps the original lines
(byte-exact) for citation, and an enclosing context (path and signatures) for embedding.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from grounding.index.languages import SYNTAX_LANGUAGES, definitions_query
from grounding.records import Chunk

MAX_DEPTH = 200  # below this, oversize nodes are cut by lines instead of by their children
SIGNATURE_CHARS = 160
_KIND_PRIORITY = {"method": 3, "class": 2, "section": 1, "function": 0}


class TokenCounter(Protocol):
    """Anything that can say where the tokens of a text start (character offsets)."""

    def token_starts(self, text: str) -> Sequence[int]: ...


class RegexTokenCounter:
    """A tokenizer-free counter (identifier pieces and punctuation), for tests and speed."""

    _TOKEN = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")

    def token_starts(self, text: str) -> Sequence[int]:
        return [m.start() for m in self._TOKEN.finditer(text)]


class HFTokenCounter:
    """Counts tokens with a Hugging Face fast tokenizer: the encoder's own budget."""

    def __init__(self, tokenizer) -> None:
        from tokenizers import Tokenizer

        # A private copy of the Rust tokenizer underneath: the encoder's own calls switch truncation
        # back on in the shared one, which would cap every file at max_length tokens.
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._tok = Tokenizer.from_str(backend.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()

    def token_starts(self, text: str) -> Sequence[int]:
        return [start for start, _ in self._tok.encode(text, add_special_tokens=False).offsets]


@dataclass(frozen=True)
class _Definition:
    kind: str
    name: str
    signature: str


@dataclass
class _Atom:
    start: int  # byte offsets into the file
    end: int
    owner: tuple[_Definition, ...]  # enclosing definitions, innermost last
    definition: _Definition | None = None  # set when the atom is a whole definition
    is_comment: bool = False


class _Source:
    """The bytes of one file with the lookups chunking needs: lines and token positions."""

    def __init__(self, data: bytes, counter: TokenCounter) -> None:
        self.data = data
        self.text = data.decode("utf-8", errors="replace")
        self.line_starts = [0] + [m.end() for m in re.finditer(b"\n", data)]
        starts = counter.token_starts(self.text)
        if not self.text.isascii():
            byte_at = [0]
            for ch in self.text:
                byte_at.append(byte_at[-1] + len(ch.encode("utf-8", errors="surrogatepass")))
            starts = [byte_at[s] for s in starts]
        self.token_starts = list(starts)

    def tokens(self, start: int, end: int) -> int:
        return bisect.bisect_left(self.token_starts, end) - bisect.bisect_left(self.token_starts, start)

    def line_tokens(self, start: int, end: int) -> int:
        """Tokens of [start, end) once widened to whole lines, as the chunk will hold them."""
        s, e, _, _ = self.line_span(start, end)
        return self.tokens(s, e)

    def line_of(self, offset: int) -> int:
        """0-based line of a byte offset."""
        return bisect.bisect_right(self.line_starts, offset) - 1

    def line_span(self, start: int, end: int) -> tuple[int, int, int, int]:
        """Widen [start, end) to whole lines: (start_byte, end_byte, first_line, last_line), 0-based lines."""
        first = self.line_of(start)
        last = self.line_of(max(start, end - 1))
        line_end = self.line_starts[last + 1] - 1 if last + 1 < len(self.line_starts) else len(self.data)
        return self.line_starts[first], line_end, first, last

    def line_text(self, line: int) -> str:
        s = self.line_starts[line]
        e = self.line_starts[line + 1] - 1 if line + 1 < len(self.line_starts) else len(self.data)
        return self.data[s:e].decode("utf-8", errors="replace")


def chunk_file(path: str, data: bytes, language: str, *, max_tokens: int, counter: TokenCounter) -> list[Chunk]:
    """Cut one file into chunks of at most `max_tokens` tokens (a single over-long line may exceed it)."""
    if not data.strip():
        return []
    source = _Source(data, counter)
    atoms = None
    if language in SYNTAX_LANGUAGES:
        atoms = _syntax_atoms(source, language, max_tokens)
    if atoms is None:
        atoms = list(_line_atoms(source, 0, len(data), (), max_tokens))
    chunks: list[Chunk] = []
    for atom in _merge(source, atoms, max_tokens):
        _, _, first, last = source.line_span(atom.start, atom.end)
        if chunks and last < chunks[-1].end_line:
            continue  # its lines are in the previous chunk already: a `};` after a class, pieces of one long line
        chunk = _to_chunk(source, path, language, atom)
        if not chunk.text.strip():
            continue
        if chunks and chunks[-1].symbol is None and chunks[-1].start_line == first + 1:
            chunks.pop()  # glue that only holds this chunk's first line (`export` before a split class)
        chunks.append(chunk)
    return chunks


@functools.cache
def _parser_and_query(language: str):
    import tree_sitter
    import tree_sitter_language_pack as tslp

    name = SYNTAX_LANGUAGES[language]
    query_text = definitions_query(language)
    query = tree_sitter.Query(tslp.get_language(name), query_text) if query_text else None
    return tslp.get_parser(name), query


def _syntax_atoms(source: _Source, language: str, max_tokens: int) -> list[_Atom] | None:
    import tree_sitter

    parser, query = _parser_and_query(language)
    tree = parser.parse(source.data)
    definitions: dict[int, _Definition] = {}
    if query is not None:
        by_name: dict[tuple[int, int], tuple[tuple[int, int], object, _Definition]] = {}
        for _, captures in tree_sitter.QueryCursor(query).matches(tree.root_node):
            names = captures.get("name", [])
            for capture, nodes in captures.items():
                if not capture.startswith("definition."):
                    continue
                node = nodes[0]
                name_node = names[0] if names else None
                name = _node_text(source, name_node).strip() if name_node else "<anonymous>"
                name = " ".join(name.split())[:SIGNATURE_CHARS] or "<anonymous>"
                sig_line = source.line_of(name_node.start_byte if name_node else node.start_byte)
                signature = source.line_text(sig_line).strip()[:SIGNATURE_CHARS]
                definition = _Definition(capture.split(".", 1)[1], name, signature)
                # A decorated definition and its inner node share one name: keep the outermost.
                key = (name_node.start_byte, name_node.end_byte) if name_node else (node.start_byte, -1)
                # The same node matched as function and as method: the more specific kind wins.
                rank = (node.end_byte - node.start_byte, _KIND_PRIORITY.get(definition.kind, 0))
                if key not in by_name or rank > by_name[key][0]:
                    by_name[key] = (rank, node, definition)
        definitions = {_node_key(node): d for _, node, d in by_name.values()}
    return list(_atoms(source, tree.root_node, (), definitions, sorted(definitions), max_tokens, 0))


def _node_key(node) -> tuple[int, int, str]:
    return (node.start_byte, node.end_byte, node.type)


def _node_text(source: _Source, node) -> str:
    return source.data[node.start_byte : node.end_byte].decode("utf-8", errors="replace")


def _holds_definition(node, spans: list[tuple[int, int, str]]) -> bool:
    """Whether a definition lies within node; spans are the sorted keys of the definitions."""
    i = bisect.bisect_left(spans, (node.start_byte,))
    while i < len(spans) and spans[i][0] < node.end_byte:
        if spans[i][1] <= node.end_byte:
            return True
        i += 1
    return False


def _atoms(source, node, owner, definitions, spans, max_tokens, depth) -> Iterator[_Atom]:
    """The atoms of an oversize (or root) node, in document order.

    A child that fits is one atom if it is a definition or holds none; glue that wraps definitions
    (`export`, a Go `type (...)` group, the body of a split class) is opened so that they stand alone.
    """
    children = node.children
    if not children or depth > MAX_DEPTH:
        yield from _line_atoms(source, node.start_byte, node.end_byte, owner, max_tokens)
        return
    cursor = node.start_byte
    for child in children:
        if child.end_byte <= child.start_byte:
            continue  # zero-width nodes (MISSING) carry no text
        if source.data[cursor : child.start_byte].strip():
            # Text that no child holds: a string's content around its escape sequences.
            yield from _line_atoms(source, cursor, child.start_byte, owner, max_tokens)
        cursor = max(cursor, child.end_byte)
        definition = definitions.get(_node_key(child))
        fits = source.line_tokens(child.start_byte, child.end_byte) <= max_tokens
        if fits and (definition or not _holds_definition(child, spans)):
            yield _Atom(child.start_byte, child.end_byte, owner, definition, "comment" in child.type)
        else:
            inner = owner + (definition,) if definition else owner
            yield from _atoms(source, child, inner, definitions, spans, max_tokens, depth + 1)
    if source.data[cursor : node.end_byte].strip():
        yield from _line_atoms(source, cursor, node.end_byte, owner, max_tokens)


def _line_atoms(source, start, end, owner, max_tokens) -> Iterator[_Atom]:
    """Windows of whole lines within [start, end), each within the budget where lines allow."""
    first, last = source.line_of(start), source.line_of(max(start, end - 1))
    window_start = start
    for line in range(first, last + 1):
        line_end = min(end, source.line_starts[line + 1] if line + 1 < len(source.line_starts) else end)
        if window_start < line_end and source.line_tokens(window_start, line_end) > max_tokens:
            line_start = max(start, source.line_starts[line])
            if line_start > window_start:
                yield _Atom(window_start, line_start, owner)
                window_start = line_start
        if line == last:
            yield _Atom(window_start, end, owner)


def _merge(source: _Source, atoms: list[_Atom], max_tokens: int) -> Iterator[_Atom]:
    """Merge runs of plain atoms of one owner; attach touching comments, and glue on its first line, to a definition."""
    group: list[_Atom] = []

    def flush() -> Iterator[_Atom]:
        if group:
            yield _Atom(group[0].start, group[-1].end, group[0].owner)
            group.clear()

    for atom in atoms:
        if atom.definition is not None:
            start = atom.start
            while group and group[-1].owner == atom.owner:
                piece = group[-1]
                if piece.is_comment:
                    attached = source.line_of(piece.end) >= source.line_of(start) - 1
                else:
                    attached = source.line_of(piece.start) == source.line_of(start)
                if not attached or source.line_tokens(piece.start, atom.end) > max_tokens:
                    break
                start = piece.start
                group.pop()
            yield from flush()
            yield _Atom(start, atom.end, atom.owner, atom.definition)
            continue
        if group and (group[0].owner != atom.owner or source.line_tokens(group[0].start, atom.end) > max_tokens):
            yield from flush()
        group.append(atom)
    yield from flush()


def _to_chunk(source: _Source, path: str, language: str, atom: _Atom) -> Chunk:
    start, end, first, last = source.line_span(atom.start, atom.end)
    names = [d.name for d in atom.owner]
    if atom.definition is not None:
        kind = atom.definition.kind
        if kind == "function" and atom.owner and atom.owner[-1].kind == "class":
            kind = "method"
        symbol = ".".join(names + [atom.definition.name])
    elif atom.owner:
        kind, symbol = "fragment", ".".join(names)
    else:
        kind, symbol = ("block", None) if language in SYNTAX_LANGUAGES else ("lines", None)
    context = "\n".join([path] + [d.signature for d in atom.owner])
    return Chunk(
        path=path,
        language=language,
        kind=kind,
        symbol=symbol,
        context=context,
        start_byte=start,
        end_byte=end,
        start_line=first + 1,
        end_line=last + 1,
        text=source.data[start:end].decode("utf-8", errors="replace"),
        token_count=source.tokens(start, end),
    )
