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
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from grounding.config import DOCUMENT_TOKENS
from grounding.errors import EncoderNotFound, InvalidArgument

logger = logging.getLogger(__name__)


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
    model, info = model_class.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    # transformers only logs (hidden at our default verbosity) the tensors it had to start at random: a
    # checkpoint of another kind (a base encoder given as a reranker, a decoder given as the encoder) would
    # rank by noise. The pooler is not used.
    random = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    random += [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    if random:
        shown = ", ".join(random[:3]) + (f" and {len(random) - 3} more" if len(random) > 3 else "")
        raise EncoderNotFound(
            f"{missing} at {path}: its checkpoint lacks {len(random)} of the model's tensors ({shown}), which "
            f"would start at random; set {setting}"
        )
    return tokenizer, model


PRECISIONS = ("auto", "fp32", "bf16")
PAD_TO = 32  # batch widths are rounded up to a multiple of this many tokens (HFEncoder._padded says why)
# A text embedded alone (a question: `ask` encodes each before it searches) is rounded to a multiple of 8 only:
# CoSQA's questions are ~10 tokens, so 32 tripled the work. One CoSQA question, p50, one process, alternating:
# MiniLM 7.2 against 8.4 ms, mpnet 24.9 against 32.7 (600 each); one row at every width to 256
# grew MiniLM by 53 MB resident (6 MB rounded to 32; 480 MB at exact widths).
QUESTION_PAD_TO = 8
# The least cosine to fp32's vector a bf16 vector may have on the probe texts for `auto` to keep bf16. MiniLM-L6
# (bench/encoder.py): min 0.99991 on 1,500 torch chunks, 0.99993 on CoSQA's 6,548; CoSQA dev MRR@10 0.5170 in
# fp32, 0.5161 in bf16 (-0.0009, paired 95% interval [-0.0034, +0.0005]); with widths rounded to PAD_TO and
# questions embedded alone, 0.5149 (-0.0021 [-0.0049, -0.0004]): small, real, inside 0.005.
BF16_MIN_COSINE = 0.9995
# What the one-time check embeds both ways: code and prose, short and at the token budget.
PROBE_TEXTS = (
    "def retry(fn, attempts=3):\n    for i in range(attempts):\n        try:\n            return fn()\n"
    "        except OSError:\n            time.sleep(2 ** i)",
    "how are invoices rounded to the nearest cent?",
    "class LRUCache:\n    def __init__(self, size):\n        self.size = size\n        self.items = OrderedDict()",
    "func (c *Context) JSON(code int, obj any) { c.Render(code, render.JSON{Data: obj}) }",
    "app.use(express.static(path.join(__dirname, 'public'), { maxAge: '1d' }))",
    "Returns the user's session token, or raises Unauthenticated if it expired.",
    "SELECT id, name FROM repos WHERE owner = $1 ORDER BY created_at DESC LIMIT 50",
    "x",
    " ".join(f"getNodeAttributes(node_{i}, parent.children[{i}]) # walk" for i in range(60)),
)


def bf16_is_fast(device: str) -> bool:
    """Whether this device has bf16 matrix units: a CUDA GPU that supports it, or a CPU with AMX or AVX512-BF16."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        with torch.cuda.device(device):
            try:  # a T4 or V100 emulates bf16, slower than fp16 or fp32
                return torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:
                return torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes)
    except (AttributeError, RuntimeError):  # private in torch; read the flags where it moved
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "amx_bf16" in flags or "avx512_bf16" in flags


class HFEncoder(Embedder):
    """A BERT-style encoder from a local directory: mean pooling over tokens, then L2 normalisation.

    `precision` auto runs it in bf16 where the device has bf16 matrix units (2.3 times fp32's chunks/s on this
    AMX CPU) once a one-time check (~0.5 s) finds bf16's vectors of PROBE_TEXTS within BF16_MIN_COSINE of
    fp32's; else fp32. The choice and the check's figure are on `precision` and `bf16_min_cosine`."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | None = None,
        max_tokens: int = DOCUMENT_TOKENS,
        precision: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel

        from grounding.config import get_settings

        precision = precision or get_settings().encoder_precision
        precision = precision.strip().lower() if isinstance(precision, str) else precision
        if precision not in PRECISIONS:
            raise InvalidArgument(
                f"encoder precision {precision!r} is not one of {', '.join(PRECISIONS)} (GROUNDING_ENCODER_PRECISION)"
            )
        self.name = str(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer, model = load_local_model(
            path, AutoModel, missing="no Hugging Face model", setting="GROUNDING_ENCODER to a local model directory"
        )
        self.model = model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = min(max_tokens, int(getattr(self.model.config, "max_position_embeddings", max_tokens)))
        self.precision = "fp32"
        self.bf16_min_cosine: float | None = None
        if precision == "bf16" or (precision == "auto" and bf16_is_fast(self.device)):
            self._try_bf16(check=precision == "auto")

    def _try_bf16(self, *, check: bool) -> None:
        import copy

        import torch

        fp32 = self.model
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16) if check else fp32.to(torch.bfloat16)  # a copy to fall back on
        if check:
            probes = list(PROBE_TEXTS)
            reference = self.embed(probes, batch_size=3)  # small batches: the long probe pads no short one
            self.model = bf16
            cosine = float((self.embed(probes, batch_size=3) * reference).sum(1).min())
            self.bf16_min_cosine = cosine
            if cosine < BF16_MIN_COSINE:
                self.model = fp32
                logger.warning(
                    "encoder %s stays in fp32: its bf16 vectors differ (min cosine %.5f < %.4f)",
                    self.name,
                    cosine,
                    BF16_MIN_COSINE,
                )
                return
        self.model = bf16
        self.precision = "bf16"
        logger.info(
            "encoder %s runs in bf16 on %s (min cosine to fp32 %s)", self.name, self.device, self.bf16_min_cosine
        )

    def embed(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """Tokenized once, then batched by token count: sorting by characters left ~22% of a batch padding on
        code (its token density varies), by tokens ~2%."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            out[idx] = self._pooled(self._padded([ids[i] for i in idx]))
        return out

    def _padded(self, rows: list[list[int]]) -> dict:
        """These token ids as one padded batch, its width rounded up to a multiple of PAD_TO (QUESTION_PAD_TO for
        one row): every new input shape costs oneDNN a kernel and a scratchpad it keeps, so exact widths (1..256)
        grew a bf16 ingest to 10 GB resident; rounded to 32, 1,500 chunks took 0.9 GB against 2.2 at the same
        speed."""
        import torch

        width = max(len(r) for r in rows)
        multiple = PAD_TO if len(rows) > 1 else QUESTION_PAD_TO
        width = max(width, min(self.max_tokens, -(-width // multiple) * multiple))
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, r in enumerate(rows):  # on the right, whatever the tokenizer's side: positions count from 0
            input_ids[row, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[row, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)["input_ids"]
        return self._pooled(self._padded(ids))

    def _pooled(self, batch) -> np.ndarray:
        import torch

        batch = {key: value.to(self.device) for key, value in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy()

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
