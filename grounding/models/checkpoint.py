"""Checkpoints of the models answer runs, and the device they run on: the only I/O in models/.

A RETRO checkpoint holds the config its model was built from (`RetroConfig.to_dict()`) beside the
weights, so `load_retro` rebuilds the model without knowing how it was trained; training writes
them (grounding.training.retro_train), completion reads them (grounding.answer.completion).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from grounding.errors import EncoderNotFound
from grounding.models.retro import Retro, RetroConfig


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def save_retro(path: str | Path, model: Retro, *, tokenizer: str, database: int, step: int, extra: dict | None = None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "tokenizer": tokenizer,
        "database": database,
        "step": step,
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_retro(path: str | Path, *, device: str = "cpu") -> tuple[Retro, dict]:
    """A RETRO (or baseline) model rebuilt from the config saved in its checkpoint, and the checkpoint's fields."""
    path = Path(path)
    if not path.is_file():
        raise EncoderNotFound(f"no RETRO checkpoint at {path}")
    try:  # tensors and plain data only: a checkpoint is never a pickle that could run code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise EncoderNotFound(f"{path} is not a RETRO checkpoint ({type(err).__name__})") from err
    # A checkpoint saved before rotary positions (or aligned neighbours) existed trained without them.
    model = Retro(RetroConfig(**{"rotary": False, "aligned": False, **state["config"]}))
    # torch.compile prefixes parameter names; a checkpoint saved from a compiled module still loads.
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state["model"].items()})
    return model.to(device).eval(), {k: v for k, v in state.items() if k != "model"}
