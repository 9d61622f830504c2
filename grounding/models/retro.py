"""RETRO (Borgeaud et al., 2021): a decoder that reads retrieved neighbours through chunked cross-attention. No I/O.

The token stream is cut into chunks of m tokens. Chunk u retrieves k neighbours, each r tokens (a
database chunk and its continuation). A bidirectional neighbour encoder reads each neighbour,
conditioned on the decoder's activations of chunk u. In the CCA layers (every third from layer 6)
the tokens from the last token of chunk u to the one before the last token of chunk u+1 attend to
the neighbours of chunk u; the first m-1 tokens attend to none. So no token sees neighbours
retrieved with text after it: the last token of chunk u already knows all of chunk u.

The same module, built with `use_cca=False`, is the baseline decoder of the same size. With
`neighbours=None` a RETRO model runs with retrieval off (its CCA layers add nothing).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class RetroConfig:
    """The architecture, saved in every checkpoint and rebuilt from it."""

    vocab_size: int
    pad_id: int = 0
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int | None = None  # 4 * d_model
    max_seq_len: int = 2048
    chunk_len: int = 64  # m
    neighbours: int = 2  # k
    retrieval_len: int = 128  # r: a neighbour chunk and its continuation
    cca_start: int = 6  # the first CCA layer, 1-based, as in the paper
    cca_every: int = 3
    enc_layers: int = 2
    enc_d_model: int | None = None  # the neighbour encoder's width; default d_model
    enc_heads: int | None = None
    dropout: float = 0.0
    use_cca: bool = True  # False: the baseline decoder without retrieval, same size otherwise
    # Rotary positions in CCA (queries at offset m-1 + j in their group, neighbour tokens at 0..r-1) and in the
    # neighbour encoder: a query lines up with the neighbour token it would copy. Checkpoints saved before
    # this field load with False (checkpoint.load_retro): learned absolute positions only, as they trained.
    rotary: bool = True
    # Each neighbour is the window of its file aligned to the chunk that retrieved it (retro_db.aligned_window):
    # its first m tokens end where that chunk's text ends there. Checkpoints saved before load with False.
    aligned: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cca_layers(self) -> tuple[int, ...]:
        """0-based indices of the decoder layers with chunked cross-attention."""
        if not self.use_cca:
            return ()
        return tuple(
            i
            for i in range(self.n_layers)
            if i + 1 >= self.cca_start and (i + 1 - self.cca_start) % self.cca_every == 0
        )


ROTARY_BASE = 10_000.0


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al., 2021) of (..., T, dh) at positions (T,): the dot product of a
    rotated query and key depends on their positions' difference only."""
    half = x.shape[-1] // 2
    freqs = ROTARY_BASE ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (dh/2,)
    angles = positions.to(torch.float32)[:, None] * freqs[None]  # (T, dh/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], dim=-1)


class Attention(nn.Module):
    """Multi-head attention: self (causal or not) when `context` is None, cross otherwise; with `q_pos` and
    `k_pos`, queries and keys are rotated to those positions (rotary)."""

    def __init__(self, d_model: int, n_heads: int, *, d_context: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        assert d_model % n_heads == 0, f"d_model {d_model} must divide into {n_heads} heads"
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_context or d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        *lead, t, d = x.shape
        return x.view(*lead, t, self.n_heads, d // self.n_heads).transpose(-2, -3)  # (..., H, T, dh)

    def forward(
        self,
        x: torch.Tensor,  # (N, Tq, d)
        context: torch.Tensor | None = None,  # (N, Tk, dc)
        *,
        key_mask: torch.Tensor | None = None,  # (N, Tk) True where a key may be attended
        causal: bool = False,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,  # cached (k, v) of earlier positions
        q_pos: torch.Tensor | None = None,  # (Tq,) rotary positions of the queries
        k_pos: torch.Tensor | None = None,  # (Tk,) and of the keys
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        q = self._heads(self.q(x))
        k, v = (self._heads(t) for t in self.kv(x if context is None else context).chunk(2, dim=-1))
        if q_pos is not None:
            q, k = rotate(q, q_pos), rotate(k, k_pos)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2)
        mask = None
        if key_mask is not None:
            mask = key_mask[:, None, None, :]  # (N, 1, 1, Tk)
        elif causal and q.shape[-2] > 1:
            tq, tk = q.shape[-2], k.shape[-2]
            # Query i sits at absolute position tk - tq + i and sees keys up to it.
            mask = torch.ones(tq, tk, dtype=torch.bool, device=x.device).tril(diagonal=tk - tq)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(-2, -3).reshape(*x.shape[:-1], -1)  # (N, Tq, d)
        return self.out(y), (k, v)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.up, self.down, self.dropout = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class NeighbourEncoder(nn.Module):
    """Bidirectional encoder of retrieved neighbours, cross-attending to the retrieving chunk's activations."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__()
        d = config.enc_d_model or config.d_model
        heads = config.enc_heads or config.n_heads
        self.rotary = config.rotary
        self.proj_in = nn.Linear(config.d_model, d, bias=False) if d != config.d_model else nn.Identity()
        self.pos = nn.Embedding(config.retrieval_len, d)
        self.layers = nn.ModuleList()
        for _ in range(config.enc_layers):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "ln1": nn.LayerNorm(d),
                        "attn": Attention(d, heads, dropout=config.dropout),
                        "ln2": nn.LayerNorm(d),
                        "cross": Attention(d, heads, d_context=config.d_model, dropout=config.dropout),
                        "ln3": nn.LayerNorm(d),
                        "ff": FeedForward(d, 4 * d, config.dropout),
                    }
                )
            )
        self.ln_f = nn.LayerNorm(d)

    def forward(
        self,
        token_embeddings: torch.Tensor,  # (B, L, k, r, d_model) embedded neighbour tokens
        token_mask: torch.Tensor,  # (B, L, k, r) True on real tokens
        chunk_hidden: torch.Tensor,  # (B, L, m, d_model) the decoder's activations of each retrieving chunk
    ) -> torch.Tensor:
        b, n_chunks, k, r, _ = token_embeddings.shape
        m = chunk_hidden.shape[2]
        x = self.proj_in(token_embeddings) + self.pos.weight[:r]  # (B, L, k, r, d)
        x = x.reshape(b * n_chunks * k, r, -1)
        mask = never_empty(token_mask.reshape(b * n_chunks * k, r))
        # Each neighbour of chunk u reads chunk u's activations: repeat them over the k neighbours.
        hidden = chunk_hidden[:, :, None].expand(b, n_chunks, k, m, -1).reshape(b * n_chunks * k, m, -1)
        # Rotary: neighbour token p and chunk position i line up at p = i (a neighbour's first m tokens match).
        tokens = torch.arange(r, device=x.device) if self.rotary else None
        chunk = torch.arange(m, device=x.device) if self.rotary else None
        for layer in self.layers:
            x = x + layer["attn"](layer["ln1"](x), key_mask=mask, q_pos=tokens, k_pos=tokens)[0]
            x = x + layer["cross"](layer["ln2"](x), hidden, q_pos=tokens, k_pos=chunk)[0]
            x = x + layer["ff"](layer["ln3"](x))
        return self.ln_f(x).view(b, n_chunks, k * r, -1)  # (B, L, k*r, d_enc)


def never_empty(mask: torch.Tensor) -> torch.Tensor:
    """A key mask where a row with no real key may attend to its first key (its output is then unused)."""
    empty = ~mask.any(-1, keepdim=True)
    first = torch.zeros_like(mask)
    first[..., 0] = True
    return mask | (empty & first)


class DecoderBlock(nn.Module):
    def __init__(self, config: RetroConfig, *, cca: bool) -> None:
        super().__init__()
        d = config.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, config.n_heads, dropout=config.dropout)
        self.cca = None
        if cca:
            self.ln_cca = nn.LayerNorm(d)
            self.cca = Attention(d, config.n_heads, d_context=config.enc_d_model or d, dropout=config.dropout)
        self.ln2 = nn.LayerNorm(d)
        self.ff = FeedForward(d, config.d_ff or 4 * d, config.dropout)


@dataclass
class RetroCache:
    """What incremental decoding keeps: self-attention keys and values, the first CCA layer's inputs,
    the neighbours given for each completed chunk and their encodings."""

    pos: int = 0
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    first_hidden: torch.Tensor | None = None  # (B, pos, d) activations entering the first CCA layer
    neighbours: dict[int, torch.Tensor] = field(default_factory=dict)  # chunk u -> (B, k, r) token ids
    encoded: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # u -> (E_u, mask)


class Retro(nn.Module):
    """The RETRO decoder (or, with use_cca=False, the baseline decoder) and its neighbour encoder."""

    def __init__(self, config: RetroConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        cca = set(config.cca_layers)
        self.blocks = nn.ModuleList(DecoderBlock(config, cca=i in cca) for i in range(config.n_layers))
        self.encoder = NeighbourEncoder(config) if cca else None
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied, as in GPT-2
        self.apply(init_weights)
        for name, p in self.named_parameters():
            if name.endswith("out.weight") or name.endswith("down.weight"):  # GPT-2's scaled residual init
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))

    def num_parameters(self, *, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - (self.pos_emb.weight.numel() if non_embedding else 0)

    # --- the neighbours -----------------------------------------------------------------------------

    def encode_neighbours(self, neighbours: torch.Tensor, chunk_hidden: torch.Tensor):
        """(B, L, k, r) token ids and (B, L, m, d) chunk activations -> (E (B, L, k*r, d_enc), mask (B, L, k*r))."""
        mask = neighbours != self.config.pad_id
        encoded = self.encoder(self.tok_emb(neighbours), mask, chunk_hidden)
        b, n_chunks = neighbours.shape[:2]
        return encoded, mask.reshape(b, n_chunks, -1)

    def chunked_cross_attention(self, block: DecoderBlock, h: torch.Tensor, encoded, mask) -> torch.Tensor:
        if encoded is None:
            return torch.zeros_like(h)
        return chunked_cross_attention(
            block.ln_cca,
            block.cca,
            h,
            encoded,
            mask,
            chunk_len=self.config.chunk_len,
            retrieval_len=self.config.retrieval_len if self.config.rotary else None,
        )

    # --- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,  # (B, n) token ids
        neighbours: torch.Tensor | None = None,  # (B, L, k, r) with L >= n // m; None: retrieval off
        *,
        cache: RetroCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, n, V). With a cache, `idx` continues the cached sequence (see `RetroCache`)."""
        if cache is not None:
            return self._forward_incremental(idx, cache)
        b, n = idx.shape
        assert n <= self.config.max_seq_len, f"sequence of {n} tokens exceeds max_seq_len {self.config.max_seq_len}"
        m = self.config.chunk_len
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[:n])
        encoded = mask = None
        for i, block in enumerate(self.blocks):
            x = x + block.attn(block.ln1(x), causal=True)[0]
            if block.cca is not None and neighbours is not None:
                if encoded is None:
                    complete = n // m  # only a complete chunk's neighbours are ever attended to
                    assert neighbours.shape[1] >= complete and neighbours.shape[2:] == (
                        self.config.neighbours,
                        self.config.retrieval_len,
                    ), f"neighbours {tuple(neighbours.shape)} must be (B, >={complete}, k, r)"
                    if complete:
                        hidden = x[:, : complete * m].reshape(b, complete, m, -1)
                        encoded, mask = self.encode_neighbours(neighbours[:, :complete], hidden)
                x = x + self.chunked_cross_attention(block, x, encoded, mask)
            x = x + block.ff(block.ln2(x))
        return self.head(self.ln_f(x))

    def _forward_incremental(self, idx: torch.Tensor, cache: RetroCache) -> torch.Tensor:
        """Positions cache.pos .. cache.pos+t-1. Neighbours for chunk u must be in cache.neighbours[u] before
        the step that feeds the last token of chunk u; a chunk without them gets no CCA (retrieval off)."""
        b, t = idx.shape
        m, start = self.config.chunk_len, cache.pos
        assert start + t <= self.config.max_seq_len, f"{start + t} tokens exceed max_seq_len"
        x = self.tok_emb(idx) + self.pos_emb.weight[start : start + t]
        first_cca = min(self.config.cca_layers, default=None)
        for i, block in enumerate(self.blocks):
            y, kv = block.attn(block.ln1(x), causal=True, past=cache.kv.get(i))
            cache.kv[i] = kv
            x = x + y
            if block.cca is not None:
                if i == first_cca:
                    cache.first_hidden = x if cache.first_hidden is None else torch.cat([cache.first_hidden, x], 1)
                    for u in range(start // m, (start + t) // m):  # chunks completed by these positions
                        if u in cache.neighbours and (start <= u * m + m - 1 < start + t):
                            hidden = cache.first_hidden[:, u * m : (u + 1) * m][:, None]
                            cache.encoded[u] = tuple(
                                z[:, 0] for z in self.encode_neighbours(cache.neighbours[u][:, None], hidden)
                            )
                x = x + self._cca_positions(block, x, start, cache)
            x = x + block.ff(block.ln2(x))
        cache.pos += t
        return self.head(self.ln_f(x))

    def _cca_positions(self, block: DecoderBlock, x: torch.Tensor, start: int, cache: RetroCache) -> torch.Tensor:
        m = self.config.chunk_len
        out = torch.zeros_like(x)
        for j in range(x.shape[1]):
            u = (start + j - (m - 1)) // m if start + j >= m - 1 else -1
            if u in cache.encoded:
                encoded, mask = cache.encoded[u]  # (B, k*r, d_enc), (B, k*r)
                q_pos = k_pos = None
                if self.config.rotary:  # as chunked_cross_attention: offset in the group, plus m - 1
                    q_pos = torch.tensor([start + j - u * m], device=x.device)
                    k_pos = cca_key_positions(encoded.shape[1], self.config.retrieval_len, device=x.device)
                y = block.cca(
                    block.ln_cca(x[:, j : j + 1]), encoded, key_mask=never_empty(mask), q_pos=q_pos, k_pos=k_pos
                )[0]
                out[:, j : j + 1] = y * mask.any(-1)[:, None, None]
        return out


def chunked_cross_attention(
    norm: nn.Module,
    attention: Attention,
    h: torch.Tensor,  # (B, n, d) a whole sequence from position 0
    encoded: torch.Tensor,  # (B, L, k*r, d_enc) neighbours of the L >= n // m complete chunks
    mask: torch.Tensor,  # (B, L, k*r) True on real neighbour tokens
    *,
    chunk_len: int,
    retrieval_len: int | None = None,
) -> torch.Tensor:
    """CCA over a sequence: (B, n, d) -> the (B, n, d) to add, zero on the first m-1 positions.

    Shifting by m-1 makes group u the last token of chunk u and the first m-1 tokens of chunk u+1;
    group u attends to the neighbours of chunk u. With `retrieval_len` (r), rotary positions: the query
    at offset j of its group is token m-1+j of chunk u's span, each neighbour's tokens are at 0..r-1, so
    a query lines up with the neighbour token at its own place (the one after it continues the text).
    Shared by RETRO and retro-fitted models.
    """
    b, n, d = h.shape
    m = chunk_len
    if n < m:
        return torch.zeros_like(h)
    shifted = h[:, m - 1 :]  # (B, n-m+1, d)
    groups = math.ceil(shifted.shape[1] / m)
    shifted = F.pad(shifted, (0, 0, 0, groups * m - shifted.shape[1]))
    queries = norm(shifted.view(b, groups, m, d)).reshape(b * groups, m, d)
    context = encoded[:, :groups].reshape(b * groups, encoded.shape[2], -1)
    key_mask = mask[:, :groups].reshape(b * groups, -1)
    q_pos = k_pos = None
    if retrieval_len is not None:
        q_pos = torch.arange(m, device=h.device) + (m - 1)
        k_pos = cca_key_positions(context.shape[1], retrieval_len, device=h.device)
    out = attention(queries, context, key_mask=never_empty(key_mask), q_pos=q_pos, k_pos=k_pos)[0]
    out = out * key_mask.any(-1)[:, None, None]  # no neighbours: no change
    out = out.view(b, groups * m, d)[:, : n - m + 1]
    return F.pad(out, (0, 0, m - 1, 0))


def cca_key_positions(n_keys: int, retrieval_len: int, *, device) -> torch.Tensor:
    """(k*r,) rotary positions of k neighbours' encoded tokens, each neighbour from 0."""
    return torch.arange(n_keys, device=device) % retrieval_len


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, *, ignore: int) -> torch.Tensor:
    """Summed next-token cross-entropy in nats over the non-ignored targets: (B, n, V), (B, n) -> ()."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore, reduction="sum"
    )


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Bits per UTF-8 byte of the text the tokens encode: comparable across tokenizers."""
    return nats / math.log(2) / max(n_bytes, 1)
