"""Embedders: one abstract batch method, the Hugging Face encoder behind it, and a hashing one for unit speed.

Ingest embeds chunks and search embeds questions with the same encoder, so the loader lives here, below
both. Encoders a higher stage defines (training's REALM towers) register with it by name prefix
(`register_encoder`); the loader never imports them.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from grounding.config import DOCUMENT_TOKENS
from grounding.errors import EncoderNotFound


class Embedder(abc.ABC):
    """Turns texts into unit-norm vectors, so that inner product is cosine similarity."""

    name: str  # recorded on the index version: which encoder made its vectors
    dim: int
    max_tokens: int  # longer inputs are truncated

    @abc.abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Vectors of shape (len(texts), dim), float32, L2-normalised."""

    def embed(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """Embed any number of texts, batched by similar length so padding stays small."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            out[idx] = self.embed_batch([texts[i] for i in idx])
        return out

    def token_counter(self):
        """The counter chunking uses to keep chunks within this encoder's budget."""
        from grounding.index.chunking import RegexTokenCounter

        return RegexTokenCounter()


def load_local_model(path: str | Path, model_class, *, missing: str, setting: str):
    """(tokenizer, model) from a local Hugging Face directory, never the hub; EncoderNotFound says what to set."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise EncoderNotFound(f"{missing} at {path} (config.json missing); set {setting}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return tokenizer, model_class.from_pretrained(str(path), local_files_only=True)


class HFEncoder(Embedder):
    """A BERT-style encoder from a local directory: mean pooling over tokens, then L2 normalisation."""

    def __init__(self, path: str | Path, *, device: str | None = None, max_tokens: int = DOCUMENT_TOKENS) -> None:
        import torch
        from transformers import AutoModel

        self.name = str(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer, model = load_local_model(
            path, AutoModel, missing="no Hugging Face model", setting="GROUNDING_ENCODER to a local model directory"
        )
        self.model = model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = min(max_tokens, int(getattr(self.model.config, "max_position_embeddings", max_tokens)))

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()

    def token_counter(self):
        from grounding.index.chunking import HFTokenCounter

        return HFTokenCounter(self.tokenizer)


class HashingEmbedder(Embedder):
    """Deterministic bag-of-identifier-pieces vectors: fast and model-free, for unit tests beside the real one."""

    _WORD = re.compile(r"[A-Za-z][a-z]*|[A-Z]+(?![a-z])|\d+")

    def __init__(self, dim: int = 64) -> None:
        self.name = f"hashing-{dim}"
        self.dim = dim
        self.max_tokens = 10_000

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in self._WORD.findall(text):
                h = int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


# name prefix -> factory(name), or "module:attribute" naming one, imported when such a name is first loaded
_ENCODERS: dict[str, Callable[[str], Embedder] | str] = {}


def register_encoder(prefix: str, factory: Callable[[str], Embedder] | str) -> None:
    """Make `load_embedder` build the names that start with `prefix` as `factory(name)`. A "module:attribute"
    string is imported only when such a name is first loaded, so registering costs no import of torch."""
    _ENCODERS[prefix] = factory


@functools.cache
def load_embedder(name: str) -> Embedder:
    """The embedder an index version names: `hashing-N`, a registered prefix (`realm:<checkpoint>#query|document`,
    a trained tower, which training registers), or a local Hugging Face encoder path. Cached per process."""
    if name.startswith("hashing-"):
        return HashingEmbedder(int(name.split("-", 1)[1]))
    for prefix, factory in _ENCODERS.items():
        if name.startswith(prefix):
            if isinstance(factory, str):
                module, _, attribute = factory.partition(":")
                factory = getattr(importlib.import_module(module), attribute)
            return factory(name)
    return HFEncoder(name)
