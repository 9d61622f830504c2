"""The training-time MIPS index: the corpus re-embedded by the current document tower, in pgvector.

REALM retrieves with a stale index and refreshes it every few hundred steps, re-embedding the corpus
with the document tower as it is then, asynchronously, while training goes on. Here each refresh is
a `shadow` index version of the repository with its own HNSW index; a background thread builds it
from a frozen copy of the tower, and training switches to it at the first step after it is ready.
Staleness is the number of optimiser steps since the weights that built the index in use.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from grounding import db, store
from grounding.records import IndexVersion
from grounding.training.checkpoint import embed_texts
from grounding.training.corpus import Corpus

log = logging.getLogger(__name__)

SHADOW_PREFIX = "realm-shadow:"
PAGE = 2000


@dataclass(frozen=True)
class RefreshSchedule:
    """When to refresh: every `every` steps, or (adaptive) after `first` steps, the interval doubling up to `every`.

    Early in training the document tower moves fastest, so an adaptive schedule refreshes at
    first, 2*first, 4*first, ... and then every `every` steps.
    """

    every: int = 500
    adaptive: bool = False
    first: int = 50

    def interval(self, last_refresh: int) -> int:
        if not self.adaptive:
            return self.every
        return min(self.every, max(self.first, last_refresh))

    def due(self, step: int, last_refresh: int) -> bool:
        return step - last_refresh >= self.interval(last_refresh)


class MipsIndex:
    """Shadow index versions of one repository, built from snapshots of a document tower and searched by training."""

    def __init__(self, corpus: Corpus, tokenizer, *, max_tokens: int, label: str, asynchronous: bool = True) -> None:
        self.corpus = corpus
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.label = label
        self.asynchronous = asynchronous
        self.engine = db.get_engine()
        with self.engine.connect() as conn:
            self.repo_id = store.repo_id(conn, corpus.repo)
        self.version: IndexVersion | None = None
        self.built_at = 0  # the step whose weights built `version`
        self.launched_at = 0  # the step of the last refresh started
        self.created: list[int] = []  # every shadow version made, in order
        self.adopted = False  # `version` is a version someone else made: never dropped here
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mips-refresh") if asynchronous else None
        self._pending: Future | None = None
        self.seconds = 0.0  # spent building indexes

    # --- building ---------------------------------------------------------------------------------

    def adopt(self, version: IndexVersion) -> None:
        """Search an existing version (the active one, made by the same document encoder) instead of building."""
        self.version, self.adopted = version, True

    def refresh(self, tower: torch.nn.Module, *, step: int) -> None:
        """Re-embed the corpus with `tower` as it is now; in the background when asynchronous."""
        if self._pending is not None and not self._pending.done():
            return  # one refresh at a time: the next is due again at the next step
        self.launched_at = step
        snapshot = copy.deepcopy(tower).eval()
        if self._pool is None:
            self._swap(self._build(snapshot, step), step)
        else:
            self._pending = self._pool.submit(self._build, snapshot, step)

    def poll(self) -> bool:
        """Switch to a finished background refresh; True when the index changed."""
        if self._pending is None or not self._pending.done():
            return False
        future, self._pending = self._pending, None
        version, step = future.result()
        self._swap((version, step), step)
        return True

    def wait(self) -> None:
        """Finish the refresh in flight, if any, and switch to it."""
        if self._pending is not None:
            self._pending.result()
            self.poll()

    def _build(self, tower: torch.nn.Module, step: int) -> tuple[IndexVersion, int]:
        t = time.perf_counter()
        texts = [c.text for c in self.corpus.chunks]
        vectors = embed_texts(tower, self.tokenizer, texts, max_tokens=self.max_tokens)
        with self.engine.begin() as conn:
            version = store.create_index_version(
                conn,
                self.repo_id,
                encoder=f"{SHADOW_PREFIX}{self.label}@{step}",
                dim=vectors.shape[1],
                note=f"training index of {self.label} at step {step}",
            )
        ids = [c.id for c in self.corpus.chunks]
        for lo in range(0, len(ids), PAGE):
            with self.engine.begin() as conn:
                store.copy_embeddings(conn, version, chunk_ids=ids[lo : lo + PAGE], vectors=vectors[lo : lo + PAGE])
        with self.engine.begin() as conn:
            store.build_vector_index(conn, version)
            store.set_index_version_status(conn, version.id, "shadow")
        self.seconds += time.perf_counter() - t
        log.info(
            "MIPS refresh at step %d: version %d, %d chunks, %.1fs", step, version.id, len(ids), time.perf_counter() - t
        )
        return version, step

    def _swap(self, built: tuple[IndexVersion, int], step: int) -> None:
        version, _ = built
        previous, was_adopted = self.version, self.adopted
        self.version, self.built_at, self.adopted = version, step, False
        self.created.append(version.id)
        if previous is not None and not was_adopted:
            with self.engine.begin() as conn:
                store.drop_index_version(
                    conn, previous.id, status="retired", note=f"superseded by version {version.id}"
                )

    # --- searching --------------------------------------------------------------------------------

    def staleness(self, step: int) -> int:
        return step - self.built_at

    def retrieve(self, queries: np.ndarray, exclude: Sequence[frozenset[int]], *, k: int) -> list[list[int]]:
        """The k nearest chunk ids of each query vector, without its excluded (trivial) chunks: (B, p) -> B lists."""
        assert self.version is not None, "refresh() or adopt() the index before retrieving from it"
        out = []
        with self.engine.begin() as conn:
            for vector, excluded in zip(queries, exclude):
                found = store.nearest_in_version(conn, self.version, vector, k=k + len(excluded))
                out.append([cid for cid, _ in found if cid not in excluded][:k])
        return out

    def close(self) -> None:
        """Drop the shadow versions this index made (their rows stay, retired, with the reason)."""
        if self._pending is not None:
            try:
                self.wait()
            except Exception:  # a failed background build: its version is swept below or by collect
                log.exception("MIPS refresh in flight failed")
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.version is not None and not self.adopted:
            with self.engine.begin() as conn:
                store.drop_index_version(conn, self.version.id, status="retired", note="training ended")
            self.version = None
