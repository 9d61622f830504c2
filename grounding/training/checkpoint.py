"""REALM checkpoints: a directory with the weights, the config they were trained under, and the tokenizer.

A checkpoint rebuilds without the encoder it started from (its HF config travels in RealmConfig), so
a model trained on a GPU worker is served anywhere the directory is. An index version names its
query encoder as `realm:<checkpoint dir>#query`; `load_embedder` turns that name into RealmEncoder, which
grounding/training/__init__.py registers with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from grounding.errors import EncoderNotFound
from grounding.index.embed import Embedder
from grounding.models.checkpoint import default_device
from grounding.models.realm import Realm, RealmConfig, build_realm

WEIGHTS = "checkpoint.pt"
TOKENIZER = "tokenizer"
PREFIX = "realm:"


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def save_checkpoint(directory: str | Path, model: Realm, tokenizer, *, step: int, extra: dict | None = None) -> Path:
    """Write weights, config and tokenizer under `directory` (replacing the weights atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "config": model.config.to_dict(),
        "step": step,
        "extra": extra or {},
        "query_tower": model.query_tower.state_dict(),
        "document_tower": None if model.config.share_towers else model.document_tower.state_dict(),
        "log_scale": model.log_scale.detach().cpu(),
        "reader": model.reader.state_dict() if model.reader is not None else None,
    }
    tmp = directory / (WEIGHTS + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / WEIGHTS)
    tokenizer.save_pretrained(str(directory / TOKENIZER))
    (directory / "config.json").write_text(json.dumps(model.config.to_dict(), indent=1), encoding="utf-8")
    return directory


def load_checkpoint(
    directory: str | Path, *, with_reader: bool = False, device: str = "cpu"
) -> tuple[Realm, object, dict]:
    """(model, tokenizer, state extras) from a checkpoint directory; the model is rebuilt from its saved config."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise EncoderNotFound(f"no REALM checkpoint at {directory} ({WEIGHTS} missing)")
    state = torch.load(directory / WEIGHTS, map_location="cpu", weights_only=False)
    config = RealmConfig(**state["config"])
    with_reader = with_reader and state["reader"] is not None
    model, _ = build_realm(config, with_reader=with_reader, pretrained=False)
    model.query_tower.load_state_dict(state["query_tower"])
    if state["document_tower"] is not None:
        model.document_tower.load_state_dict(state["document_tower"])
    if with_reader:
        model.reader.load_state_dict(state["reader"])
    with torch.no_grad():
        model.log_scale.copy_(state["log_scale"])
    tokenizer = load_tokenizer(directory / TOKENIZER)
    return model.to(device).eval(), tokenizer, {"step": state["step"], **state["extra"]}


def encoder_name(directory: str | Path, tower: str) -> str:
    """The name an index version records for one tower of a checkpoint."""
    if tower not in ("query", "document"):
        raise ValueError(f"tower must be query or document, not {tower!r}")
    return f"{PREFIX}{Path(directory).resolve()}#{tower}"


def parse_encoder_name(name: str) -> tuple[Path, str]:
    if not name.startswith(PREFIX) or "#" not in name:
        raise EncoderNotFound(f"{name!r} is not a REALM encoder name (realm:<checkpoint dir>#query|document)")
    path, tower = name[len(PREFIX) :].rsplit("#", 1)
    return Path(path), tower


@torch.inference_mode()
def embed_texts(
    tower: torch.nn.Module, tokenizer, texts: list[str], *, max_tokens: int, batch_size: int = 64
) -> np.ndarray:
    """Unit vectors of `texts` through one tower, batched by length: (N, p) float32."""
    device = next(tower.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        ).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            vectors = tower(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class RealmEncoder(Embedder):
    """One tower of a REALM checkpoint as an Embedder: how serving encodes questions for a trained version."""

    def __init__(self, name: str, *, device: str | None = None) -> None:
        directory, tower = parse_encoder_name(name)
        model, self.tokenizer, _ = load_checkpoint(directory, device=device or default_device())
        self.name = name
        self.tower = model.query_tower if tower == "query" else model.document_tower
        self.dim = int(self.tower.projection.out_features)
        config = model.config
        self.max_tokens = config.max_query_tokens if tower == "query" else config.max_doc_tokens

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.tower, self.tokenizer, texts, max_tokens=self.max_tokens, batch_size=len(texts) or 1)

    def token_counter(self):
        from grounding.index.chunking import HFTokenCounter

        return HFTokenCounter(self.tokenizer)
