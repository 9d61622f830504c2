"""RETRO-fitting (Borgeaud et al., 2021, section 4.4): a frozen Hugging Face causal LM with chunked
cross-attention and a neighbour encoder inserted and trained alone. No I/O: the caller loads the base.

The CCA blocks run after chosen decoder layers through forward hooks and add to the layer's output.
Their output projections start at zero, so a freshly retro-fitted model computes exactly the base
model's logits, and it keeps doing so whenever no neighbours are given. The neighbour encoder is
`retro.NeighbourEncoder`, conditioned on the activations at the first CCA layer (that layer's
output, before its CCA), and it embeds neighbour tokens with the base's frozen input embeddings.

A checkpoint stores `RetrofitConfig.to_dict()` and `RetroFitted.new_state_dict()`; the base is
rebuilt from `config.base_config` and loaded from `config.base_path` (or wherever the caller has it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch
import transformers
from torch import nn

from grounding.models.retro import Attention, NeighbourEncoder, RetroConfig, chunked_cross_attention, init_weights

# model_type -> the list of decoder layers of a *ForCausalLM of that architecture.
_DECODER_LAYERS = {
    "gpt2": lambda base: base.transformer.h,
    "llama": lambda base: base.model.layers,
}


def default_cca_layers(n_layers: int) -> tuple[int, ...]:
    """0-based CCA layers: every third from layer 6 (1-based), as in the paper.

    A base with fewer than 6 layers has none of those; it gets the last layer and every third one
    counting down from it (4 layers -> (0, 3)), so small models still read their neighbours late.
    """
    if n_layers >= 6:
        return tuple(i for i in range(n_layers) if (i + 1 - 6) % 3 == 0 and i + 1 >= 6)
    return tuple(sorted(range(n_layers - 1, -1, -3)))


@dataclass(frozen=True)
class RetrofitConfig:
    """What to insert into which base, saved in every checkpoint and rebuilt from it."""

    base_config: dict  # the base's `PretrainedConfig.to_dict()`: rebuilds its architecture without base_path
    base_path: str | None = None  # where the base's weights were loaded from, for the caller to reload
    chunk_len: int = 64  # m
    neighbours: int = 2  # k
    retrieval_len: int = 128  # r: a neighbour chunk and its continuation
    cca_layers: tuple[int, ...] | None = None  # 0-based decoder layers; None: `default_cca_layers`
    enc_layers: int = 2
    enc_d_model: int | None = None  # the neighbour encoder's width; default the base's hidden size
    enc_heads: int | None = None  # default the base's attention heads
    pad_id: int = 0  # the neighbour token that marks padding (never attended to)

    @classmethod
    def from_base(cls, base: transformers.PreTrainedModel, **kwargs) -> RetrofitConfig:
        """A config for `base`, its architecture copied from `base.config`."""
        return cls(base_config=base.config.to_dict(), **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def layer_indices(self) -> tuple[int, ...]:
        """The resolved 0-based CCA layers, sorted."""
        if self.cca_layers is not None:
            return tuple(sorted(self.cca_layers))
        # GPT-2 saves its depth as n_layer, LLaMA as num_hidden_layers.
        n_layers = self.base_config.get("num_hidden_layers", self.base_config.get("n_layer"))
        if n_layers is None:
            raise ValueError("base_config names no number of layers (num_hidden_layers or n_layer)")
        return default_cca_layers(n_layers)


class ChunkedCrossAttention(nn.Module):
    """One inserted CCA block: (B, n, d) -> the (B, n, d) to add, zero on the first m-1 positions.

    The same `chunked_cross_attention` as RETRO's: group u (the last token of chunk u and the first m-1
    tokens of chunk u+1) attends to the neighbours of chunk u.
    """

    def __init__(self, d_model: int, n_heads: int, *, d_context: int, chunk_len: int) -> None:
        super().__init__()
        self.chunk_len = chunk_len
        self.ln = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, d_context=d_context)
        self.apply(init_weights)
        # Zero output: the retro-fitted model starts as the base model, and training moves it from there.
        nn.init.zeros_(self.attn.out.weight)

    def forward(
        self,
        h: torch.Tensor,  # (B, n, d)
        encoded: torch.Tensor,  # (B, L, k*r, d_enc) for the L = n // m complete chunks
        mask: torch.Tensor,  # (B, L, k*r) True on real neighbour tokens
    ) -> torch.Tensor:
        return chunked_cross_attention(self.ln, self.attn, h, encoded, mask, chunk_len=self.chunk_len)


@dataclass
class _Pass:
    """The neighbours of the forward pass in progress, and their encodings once the first CCA layer made them."""

    neighbours: torch.Tensor  # (B, L, k, r) for the L complete chunks
    encoded: torch.Tensor | None = None  # (B, L, k*r, d_enc)
    mask: torch.Tensor | None = None  # (B, L, k*r)


class RetroFitted(nn.Module):
    """A frozen GPT-2 or LLaMA causal LM with chunked cross-attention after some of its layers.

    Only the inserted modules train: two input norms, the neighbour encoder and the CCA blocks. The frozen base stays
    in eval mode whatever `train()` says: its dropout would only add noise to the activations CCA
    learns to read. Hooks read per-call state, so one forward at a time (no gradient checkpointing).
    """

    def __init__(self, base: transformers.PreTrainedModel, config: RetrofitConfig) -> None:
        super().__init__()
        model_type = base.config.model_type
        if model_type not in _DECODER_LAYERS:
            raise ValueError(
                f"cannot retro-fit {type(base).__name__} (model_type {model_type!r}): "
                f"supported are the causal LMs of {sorted(_DECODER_LAYERS)}"
            )
        if config.base_config.get("model_type") != model_type:
            raise ValueError(f"config is for a {config.base_config.get('model_type')!r} base, got {model_type!r}")
        layers = _DECODER_LAYERS[model_type](base)
        chosen = config.layer_indices
        if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= i < len(layers) for i in chosen):
            raise ValueError(f"cca_layers {chosen} must be distinct indices into the base's {len(layers)} layers")

        self.config = config
        self.base = base.requires_grad_(False).eval()
        d, heads = base.config.hidden_size, base.config.num_attention_heads
        retro_config = RetroConfig(
            vocab_size=base.config.vocab_size,
            pad_id=config.pad_id,
            d_model=d,
            n_layers=len(layers),
            n_heads=heads,
            chunk_len=config.chunk_len,
            neighbours=config.neighbours,
            retrieval_len=config.retrieval_len,
            enc_layers=config.enc_layers,
            enc_d_model=config.enc_d_model,
            enc_heads=config.enc_heads,
            rotary=False,  # retro-fitted CCA keeps learned positions: its checkpoints trained with them
        )
        # A frozen base's activations and embeddings can be far from unit scale (GPT-2 has outlier
        # features in the hundreds; LLaMA's embeddings are as small as the encoder's positions):
        # normalise what the encoder reads and conditions on, as CCA's queries are normalised.
        self.token_norm = nn.LayerNorm(d)
        self.hidden_norm = nn.LayerNorm(d)
        self.encoder = NeighbourEncoder(retro_config)
        self.encoder.apply(init_weights)
        d_enc = config.enc_d_model or d
        self.cca = nn.ModuleDict(
            {str(i): ChunkedCrossAttention(d, heads, d_context=d_enc, chunk_len=config.chunk_len) for i in chosen}
        )
        embeddings = base.get_input_embeddings().weight
        for module in self._new_modules().values():
            module.to(embeddings.device)  # float32 whatever the base's dtype: the hooks cast in and out

        self._first_layer = chosen[0]
        self._pass: _Pass | None = None
        self._hooks = [layers[i].register_forward_hook(partial(self._after_layer, i)) for i in chosen]

    # --- the inserted modules -----------------------------------------------------------------------

    def _new_modules(self) -> dict[str, nn.Module]:
        return {
            "token_norm": self.token_norm,
            "hidden_norm": self.hidden_norm,
            "encoder": self.encoder,
            "cca": self.cca,
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The inserted modules' parameters: the only ones an optimiser should see."""
        return [p for module in self._new_modules().values() for p in module.parameters()]

    def new_state_dict(self) -> dict[str, torch.Tensor]:
        """The inserted modules' state, keyed as in `state_dict()`: what a checkpoint stores besides the config."""
        return {
            f"{name}.{key}": value
            for name, module in self._new_modules().items()
            for key, value in module.state_dict().items()
        }

    def load_new_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `new_state_dict` returned; every inserted tensor must be there and nothing else."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("base.")]
        if missing or unexpected:
            raise ValueError(f"retro-fit state does not match: missing {missing}, unexpected {unexpected}")

    def train(self, mode: bool = True) -> RetroFitted:
        super().train(mode)
        self.base.eval()
        return self

    def remove_hooks(self) -> None:
        """Detach the CCA hooks from the base, which then runs as it did before."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # --- the neighbours -----------------------------------------------------------------------------

    def encode_neighbours(self, neighbours: torch.Tensor, chunk_hidden: torch.Tensor):
        """(B, L, k, r) token ids and (B, L, m, d) chunk activations -> (E (B, L, k*r, d_enc), mask (B, L, k*r))."""
        dtype = self.hidden_norm.weight.dtype
        mask = neighbours != self.config.pad_id
        tokens = self.token_norm(self.base.get_input_embeddings()(neighbours).to(dtype))  # (B, L, k, r, d)
        encoded = self.encoder(tokens, mask, self.hidden_norm(chunk_hidden.to(dtype)))
        b, n_chunks = neighbours.shape[:2]
        return encoded, mask.reshape(b, n_chunks, -1)

    def _after_layer(self, i: int, module: nn.Module, args: tuple, output):
        """Forward hook on decoder layer i: add CCA to its output hidden states (a tensor, or a tuple's first)."""
        state = self._pass
        if state is None:  # the base called directly, or retrieval off
            return None
        h = output[0] if isinstance(output, tuple) else output  # (B, n, d)
        if i == self._first_layer:
            b, _, d = h.shape
            complete, m = state.neighbours.shape[1], self.config.chunk_len
            hidden = h[:, : complete * m].reshape(b, complete, m, d)
            state.encoded, state.mask = self.encode_neighbours(state.neighbours, hidden)
        cca = self.cca[str(i)]
        h = h + cca(h.to(cca.ln.weight.dtype), state.encoded, state.mask).to(h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    # --- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,  # (B, n) token ids
        neighbours: torch.Tensor | None = None,  # (B, L, k, r) with L >= n // m; None: retrieval off
    ) -> torch.Tensor:
        """Next-token logits (B, n, V) over the whole sequence; with no neighbours, the base model's."""
        n = idx.shape[1]
        complete = n // self.config.chunk_len  # only a complete chunk's neighbours are ever attended to
        if neighbours is not None:
            k, r = self.config.neighbours, self.config.retrieval_len
            assert neighbours.shape[0] == idx.shape[0] and neighbours.shape[1] >= complete, (
                f"neighbours {tuple(neighbours.shape)} must be (B={idx.shape[0]}, >={complete}, k={k}, r={r})"
            )
            assert neighbours.shape[2:] == (k, r), f"neighbours {tuple(neighbours.shape)} must be (B, L, k={k}, r={r})"
        self._pass = _Pass(neighbours[:, :complete]) if neighbours is not None and complete else None
        try:
            return self.base(input_ids=idx, use_cache=False).logits
        finally:
            self._pass = None


def retrofit(base: transformers.PreTrainedModel, config: RetrofitConfig) -> RetroFitted:
    """Freeze `base` and insert chunked cross-attention and a neighbour encoder as `config` says."""
    return RetroFitted(base, config)
