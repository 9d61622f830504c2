"""Rerankers: score (question, passage) pairs jointly, to reorder the fused candidates of a search.

A cross-encoder reads the question and the chunk together, so it can weigh what a bi-encoder's
single vector and the lexical ranks cannot; it is too slow for the whole repository, so it only
reorders the first GROUNDING_RERANK_CANDIDATES hits of the hybrid search (never more: a search that fetches more
to merge or widen keeps the rest in fused order below them).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

from grounding.records import Hit

CONFIG_FILE = "grounding_reranker.json"  # beside config.json in a directory train-reranker wrote


class Reranker(abc.ABC):
    """Scores passages against a question: higher is more relevant.

    `prior_weight` keeps some of the fused order: a hit's final score is the reranker's minus
    prior_weight x ln(its fused position), so 0 is the reranker alone and a large weight the fused
    order alone. `grounding train-reranker` chooses it on validation questions and saves it.
    """

    name: str
    prior_weight: float = 0.0

    @abc.abstractmethod
    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in the order given."""


class CrossEncoderReranker(Reranker):
    """A sequence-classification model that scores a (question, passage) pair.

    A one-label model's logit is the score; with several labels, the probability of the last
    (the positive class of the usual two-label relevance models). A directory written by
    `grounding train-reranker` also holds CONFIG_FILE, whose `max_tokens` (what it was trained on)
    is used unless the caller gives one.
    """

    def __init__(
        self, path: str | Path, *, device: str | None = None, max_tokens: int | None = None, batch_size: int = 16
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from grounding.index.embed import load_local_model

        path = Path(path)
        tokenizer, model = load_local_model(
            path,
            AutoModelForSequenceClassification,
            missing="no Hugging Face reranker",
            setting="GROUNDING_RERANKER to a local cross-encoder directory",
        )
        saved = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")) if (path / CONFIG_FILE).is_file() else {}
        max_tokens = max_tokens or saved.get("max_tokens")
        self.prior_weight = float(saved.get("prior_weight", 0.0))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._setup(model.to(device).eval(), tokenizer, name=str(path), device=device, max_tokens=max_tokens or 512)
        self.batch_size = batch_size

    @classmethod
    def from_model(
        cls, model, tokenizer, *, max_tokens: int, device: str, name: str = "in-memory"
    ) -> CrossEncoderReranker:
        """Score with a model in memory (training validates with it); the caller owns train/eval mode."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, name=name, device=device, max_tokens=max_tokens)
        self.batch_size = 32
        return self

    def _setup(self, model, tokenizer, *, name: str, device: str, max_tokens: int) -> None:
        self.name, self.model, self.tokenizer, self.device = name, model, tokenizer, device
        self.max_tokens = min(max_tokens, int(getattr(model.config, "max_position_embeddings", max_tokens)))

    def score(self, question: str, texts: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = []
        for lo in range(0, len(texts), self.batch_size):
            batch = list(texts[lo : lo + self.batch_size])
            encoded = self.tokenizer(
                [question] * len(batch),
                batch,
                padding=True,
                truncation="only_second",  # the question is short; cut the passage, never the question
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**encoded).logits  # (B, num_labels)
            if logits.shape[-1] == 1:
                scores.extend(logits[:, 0].float().cpu().tolist())
            else:
                scores.extend(logits.softmax(-1)[:, -1].float().cpu().tolist())
        return scores


@functools.lru_cache(maxsize=4)  # a long-lived server sees each night's promoted model: keep the recent ones
def load_reranker(path: str) -> Reranker:
    """The cross-encoder at a local path, loaded once per process (while among the last few used)."""
    return CrossEncoderReranker(path)


def passage(hit: Hit) -> str:
    """What the reranker reads for a hit: its path (names say much in code), then the chunk's lines."""
    return f"{hit.citation.path}\n{hit.citation.snippet}"


def rerank_hits(
    reranker: Reranker, question: str, hits: Sequence[Hit], *, known: dict[int, float] | None = None
) -> list[Hit]:
    """The hits ordered by the reranker's score (ties keep their fused order); the score replaces the fused one.

    The hits come in fused order: with a prior weight, a hit's position in them counts (see `combined`).

    `known` maps chunk ids to scores already computed for this question: only the other hits are
    scored, and their scores are added to it (a search that widens its candidates reuses them).
    """
    known = {} if known is None else known
    todo = [h for h in hits if h.chunk_id not in known]
    if todo:
        scores = reranker.score(question, [passage(h) for h in todo])
        if len(scores) != len(todo):
            raise ValueError(f"reranker {reranker.name!r} returned {len(scores)} scores for {len(todo)} passages")
        known.update((h.chunk_id, float(s)) for h, s in zip(todo, scores))
    final = {h.chunk_id: combined(known[h.chunk_id], i, reranker.prior_weight) for i, h in enumerate(hits)}
    ordered = sorted(hits, key=lambda h: -final[h.chunk_id])  # sorted is stable: ties keep the fused order
    return [
        dataclasses.replace(
            h, score=final[h.chunk_id], citation=dataclasses.replace(h.citation, score=final[h.chunk_id])
        )
        for h in ordered
    ]


def rerank_head(
    reranker: Reranker, question: str, hits: Sequence[Hit], candidates: int, *, known: dict[int, float] | None = None
) -> list[Hit]:
    """The first `candidates` hits reordered by the reranker, the rest after them in fused order.

    The reranker is trained, tuned and timed on that many candidates: a search that fetches more (to
    merge parts, or to widen) must not hand it more. The hits below the head take the head's lowest
    score, so that anything sorting by score keeps them below it, in their fused order.
    """
    head = rerank_hits(reranker, question, hits[:candidates], known=known)
    if not head or len(hits) <= candidates:
        return head
    floor = min(h.score for h in head)
    tail = [
        dataclasses.replace(h, score=floor, citation=dataclasses.replace(h.citation, score=floor))
        for h in hits[candidates:]
    ]
    return head + tail


def combined(score: float, position: int, prior_weight: float) -> float:
    """The reranker's score of the hit at 0-based fused `position`, less prior_weight x ln(position + 1)."""
    return score - prior_weight * math.log(position + 1) if prior_weight else score
