"""The corpus a training run reads: a repository's visible chunks, and which of them are trivial retrievals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grounding import db, store
from grounding.training.masking import distinctive


@dataclass(frozen=True)
class CorpusChunk:
    """A visible chunk as training sees it."""

    id: int
    path: str
    language: str
    start_line: int
    end_line: int
    symbol: str | None
    content_hash: str
    text: str  # what the document tower embeds: context, then code


class Corpus:
    """The chunks of one repository snapshot, indexed by id, with their trivial neighbours."""

    def __init__(self, repo: str, chunks: Sequence[CorpusChunk]) -> None:
        self.repo = repo
        self.chunks = list(chunks)
        self.by_id = {c.id: c for c in self.chunks}
        self._by_path: dict[str, list[CorpusChunk]] = {}
        self._by_hash: dict[str, list[int]] = {}
        self._by_name: dict[str, list[int]] = {}
        for c in self.chunks:
            if c.symbol and distinctive(name := c.symbol.rsplit(".", 1)[-1]):
                self._by_name.setdefault(name, []).append(c.id)
            self._by_path.setdefault(c.path, []).append(c)
            self._by_hash.setdefault(c.content_hash, []).append(c.id)

    def __len__(self) -> int:
        return len(self.chunks)

    def trivial(self, chunk_id: int) -> frozenset[int]:
        """Chunks that would answer an example from `chunk_id` by copying it: itself, the chunks of the same
        file whose lines overlap it (an enclosing class, a split function's other part), and its duplicates."""
        c = self.by_id[chunk_id]
        out = {c.id, *self._by_hash[c.content_hash]}
        for other in self._by_path[c.path]:
            if other.start_line <= c.end_line and other.end_line >= c.start_line:
                out.add(other.id)
        return frozenset(out)

    def named(self, name: str) -> list[int]:
        """The chunks defining `name` (the last part of their symbol): overrides, re-implementations, copies.
        Names every class defines (`__init__`) or too short to tell apart (`get`) are not indexed: their
        other definitions are the hardest negatives, not answers."""
        return self._by_name.get(name, [])

    def in_span(self, path: str, start_line: int, end_line: int) -> list[CorpusChunk]:
        """The chunks of `path` overlapping the lines, the best match first (line overlap over line union):
        a method's own chunk before the class chunk that also spans it."""
        found = [c for c in self._by_path.get(path, []) if c.start_line <= end_line and c.end_line >= start_line]

        def jaccard(c: CorpusChunk) -> float:
            inter = min(c.end_line, end_line) - max(c.start_line, start_line) + 1
            return inter / (max(c.end_line, end_line) - min(c.start_line, start_line) + 1)

        return sorted(found, key=lambda c: (-jaccard(c), c.id))


def load_corpus(repo: str) -> Corpus:
    """Every visible chunk of an ingested repository."""
    with db.get_engine().connect() as conn:
        rows = store.corpus_chunks(conn, store.repo_id(conn, repo))
    return Corpus(repo, [CorpusChunk(*row) for row in rows])
