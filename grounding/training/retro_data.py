"""RETRO's training and evaluation data: chunk-aligned token sequences and their neighbours' tokens (pure).

Every database chunk is padded to m tokens so a sequence is a whole number of chunks, and chunk j of
a sequence is a database chunk whose neighbours are known. Sequences are consecutive chunks in
(path, ordinal) order; a file ends with eos, and padding is never a target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MIN_OVERLAP_TOKENS = 8  # the paper's leakage filter: a neighbour sharing 8+ contiguous tokens may be a copy


@dataclass(frozen=True)
class ChunkGrid:
    """Chunks as rows of m tokens, and each chunk's neighbours as (k, r) token rows."""

    chunk_ids: np.ndarray  # (N,)
    tokens: np.ndarray  # (N, m) int64, padded with pad_id
    neighbours: np.ndarray  # (N, k, r) int64, padded with pad_id
    paths: tuple[str, ...]  # (N,) the file of each chunk
    pad_id: int

    def __len__(self) -> int:
        return len(self.chunk_ids)

    @property
    def chunk_len(self) -> int:
        return self.tokens.shape[1]


def build_grid(
    chunks: Sequence,  # RetroChunk-like: id, path, tokens, in (path, ordinal) order
    neighbour_ids: Mapping[int, Sequence[int]],
    neighbour_tokens: Mapping[int, Sequence[int]],  # database chunk id -> its tokens + continuation
    *,
    chunk_len: int,
    neighbours: int,
    retrieval_len: int,
    pad_id: int,
) -> ChunkGrid:
    n = len(chunks)
    tokens = np.full((n, chunk_len), pad_id, dtype=np.int64)
    nb = np.full((n, neighbours, retrieval_len), pad_id, dtype=np.int64)
    for row, chunk in enumerate(chunks):
        tokens[row, : len(chunk.tokens)] = chunk.tokens[:chunk_len]
        for j, nid in enumerate(list(neighbour_ids.get(chunk.id, ()))[:neighbours]):
            found = list(neighbour_tokens[nid])[:retrieval_len]
            nb[row, j, : len(found)] = found
    return ChunkGrid(np.array([c.id for c in chunks]), tokens, nb, tuple(c.path for c in chunks), pad_id)


def sequences(grid: ChunkGrid, chunks_per_sequence: int) -> list[np.ndarray]:
    """Row indices of consecutive chunks, `chunks_per_sequence` each (the last may be shorter)."""
    rows = np.arange(len(grid))
    return [rows[i : i + chunks_per_sequence] for i in range(0, len(rows), chunks_per_sequence)]


def batch_tensors(grid: ChunkGrid, rows: Sequence[np.ndarray], *, with_neighbours: bool = True):
    """(idx (B, n), targets (B, n), neighbours (B, L, k, r) or None) for sequences of chunk rows.

    Target p is token p+1; it is ignored (pad_id) where either token is padding, and at the end.
    """
    width = max(len(r) for r in rows)
    pad = grid.pad_id
    idx = np.full((len(rows), width * grid.chunk_len), pad, dtype=np.int64)
    nb = np.full((len(rows), width, *grid.neighbours.shape[1:]), pad, dtype=np.int64)
    for b, r in enumerate(rows):
        idx[b, : len(r) * grid.chunk_len] = grid.tokens[r].reshape(-1)
        nb[b, : len(r)] = grid.neighbours[r]
    targets = np.full_like(idx, pad)
    targets[:, :-1] = idx[:, 1:]
    targets[idx == pad] = pad
    return (
        torch.from_numpy(idx),
        torch.from_numpy(targets),
        torch.from_numpy(nb) if with_neighbours else None,
    )


def shares_run(a: np.ndarray, b: np.ndarray, length: int) -> bool:
    """Whether a and b share a contiguous run of at least `length` tokens."""
    la, lb = len(a), len(b)
    if la < length or lb < length:
        return False
    equal = a[:, None] == b[None, :]  # (la, lb)
    run = equal[: la - length + 1, : lb - length + 1].copy()
    for s in range(1, length):  # a run is `length` equal pairs along one diagonal
        run &= equal[s : la - length + 1 + s, s : lb - length + 1 + s]
    return bool(run.any())


def low_overlap_rows(grid: ChunkGrid, chunks_per_sequence: int, *, threshold: int = MIN_OVERLAP_TOKENS) -> np.ndarray:
    """Boolean (N,): chunks sharing fewer than `threshold` contiguous tokens with every neighbour they are
    predicted with. CCA is causal, so chunk u is predicted with the neighbours of chunk u-1 of its
    sequence; a sequence's first chunk sees none and always passes."""
    pad = grid.pad_id
    keep = np.ones(len(grid), dtype=bool)
    for row in range(len(grid)):
        if row % chunks_per_sequence == 0:
            continue
        own = grid.tokens[row][grid.tokens[row] != pad]
        for nb in grid.neighbours[row - 1]:
            if shares_run(own, nb[nb != pad], threshold):
                keep[row] = False
                break
    return keep


COPY_NGRAM = 4  # a target token is "copyable" when the n-gram ending at it appears in a neighbour


def neighbour_quality(grid: ChunkGrid, chunks_per_sequence: int, *, threshold: int = MIN_OVERLAP_TOKENS) -> dict:
    """How much the neighbours hold that the model could copy, measured before any training.

    Over the chunks that are predicted with neighbours (all but a sequence's first: chunk u reads the
    neighbours of chunk u-1): `share` is the fraction sharing a run of `threshold`+ tokens with one of them,
    `copyable` the fraction of their tokens whose COPY_NGRAM-gram (ending at the token) is in one of them."""
    pad = grid.pad_id
    predicted = shared = tokens = copyable = 0
    n = COPY_NGRAM
    for row in range(len(grid)):
        if row % chunks_per_sequence == 0:
            continue
        own = grid.tokens[row][grid.tokens[row] != pad]
        rows = [nb[nb != pad] for nb in grid.neighbours[row - 1]]
        predicted += 1
        shared += any(shares_run(own, nb, threshold) for nb in rows)
        grams = {tuple(nb[i : i + n]) for nb in rows for i in range(len(nb) - n + 1)}
        tokens += len(own)
        copyable += sum(tuple(own[i - n + 1 : i + 1]) in grams for i in range(n - 1, len(own)))
    return {
        "chunks": predicted,
        "share": shared / max(predicted, 1),
        "copyable": copyable / max(tokens, 1),
    }
