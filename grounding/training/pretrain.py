"""REALM pre-training on a codebase: salient-span masked chunks, retrieval from a refreshed MIPS index.

Each step samples chunks, masks a salient name in each (or random tokens, the ablation), retrieves
the top-k chunks for the masked text from the MIPS index, never the chunk itself nor its overlapping
neighbours, and minimises -log sum_z p(z|x) p(y|z,x) over those k and the null document. The
retriever learns from the reader's signal: documents that make the masked name predictable gain
probability. An optional Inverse Cloze Task warm-up trains the two towers first (pseudo-query: a
few lines of a chunk; its document: the rest of the chunk).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from grounding.errors import DatasetError
from grounding.models.realm import IGNORE, Realm
from grounding.training.corpus import Corpus
from grounding.training.masking import choose_salient, defined_names, random_mask, salient_spans
from grounding.training.mips import MipsIndex, RefreshSchedule
from grounding.training.runs import MetricsLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """How REALM pre-training runs; saved in the checkpoint beside the model's RealmConfig."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-5
    reader_lr: float = 1e-4  # the reader's MLM head starts from scratch
    warmup: int = 50
    masking: str = "salient"  # salient or random (the ablation)
    refresh_every: int = 500
    adaptive_refresh: bool = True
    first_refresh: int = 50
    asynchronous_refresh: bool = True
    ict_steps: int = 0  # Inverse Cloze Task warm-up steps before REALM's
    # The reader learns to read before the retriever listens to it (REALM warm-starts both sides): half of these
    # steps with the null document only (the masked-LM task), half beside a chunk that defines the masked name,
    # until the utility log p(y|z*,x) - log p(y|null,x) is clearly above 0. A reader with a random head gives the
    # retriever a gradient of about zero (p(y|z,x) ~ p(y|null,x) for every z).
    reader_warmup_steps: int = 100
    reader_target_utility: float = 0.693  # nats: p(y|z*,x) twice p(y|null,x), averaged over the last steps
    log_every: int = 10
    seed: int = 0
    amp: bool | None = None  # bf16 autocast; None: on CUDA only
    # Recompute each encoder layer in the backward pass instead of keeping its activations: the same gradients for
    # one more forward pass. None: on the CPU only, where attention with dropout falls back to PyTorch's math kernel,
    # which keeps every layer's (sequences x heads x T x T) attention probabilities for the backward pass.
    activation_checkpointing: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MaskedExample:
    chunk_id: int
    input_ids: list[int]  # [CLS] x [SEP] with [MASK] at the targets
    labels: list[int]  # the original ids at the masked positions, IGNORE elsewhere
    answers: tuple[int, ...] = ()  # chunks defining the masked name (not the example's own): what a reader can read


class ExampleMaker:
    """Masked examples from corpus chunks, tokenized once per chunk and cached."""

    def __init__(self, corpus: Corpus, tokenizer, *, max_tokens: int, masking: str, seed: int) -> None:
        if masking not in ("salient", "random"):
            raise ValueError(f"masking must be salient or random, not {masking!r}")
        self.corpus, self.tokenizer, self.max_tokens, self.masking = corpus, tokenizer, max_tokens, masking
        self.rng = random.Random(seed)
        definitions = defined_names((c.id, c.symbol) for c in corpus.chunks)
        self.definitions = definitions
        self.spans = {}
        for c in corpus.chunks:
            found = (
                salient_spans(c.text, c.language, chunk_id=c.id, definitions=definitions, own=corpus.trivial(c.id))
                if masking == "salient"
                else []
            )
            if found or masking == "random":
                self.spans[c.id] = found
        self.eligible = sorted(self.spans)
        if not self.eligible:
            raise DatasetError(f"no chunk of {corpus.repo!r} uses a name defined in another chunk: nothing to mask")

    def make(self, chunk_id: int) -> MaskedExample | None:
        chunk = self.corpus.by_id[chunk_id]
        enc = self.tokenizer(
            chunk.text,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_tokens - 2,
            return_offsets_mapping=True,
        )
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        answers: tuple[int, ...] = ()
        if self.masking == "salient":
            mask, name = choose_salient(offsets, self.spans[chunk_id], self.rng)
            if name is not None:
                answers = tuple(sorted(self.definitions[name] - self.corpus.trivial(chunk_id)))
        else:
            mask = random_mask(offsets, self.rng)
        if not any(mask):
            return None
        tok = self.tokenizer
        masked = [tok.mask_token_id if m else i for i, m in zip(ids, mask)]
        labels = [i if m else IGNORE for i, m in zip(ids, mask)]
        return MaskedExample(
            chunk_id, [tok.cls_token_id, *masked, tok.sep_token_id], [IGNORE, *labels, IGNORE], answers
        )

    def sample(self, n: int) -> list[MaskedExample]:
        out: list[MaskedExample] = []
        for _ in range(n * 20):
            example = self.make(self.rng.choice(self.eligible))
            if example is not None:
                out.append(example)
                if len(out) == n:
                    return out
        raise DatasetError("salient spans fall outside the token budget of almost every chunk; raise max_query_tokens")


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


class DocumentTokens:
    """Chunk ids -> document-tower token ids ([CLS] z [SEP], truncated), cached."""

    def __init__(self, corpus: Corpus, tokenizer, *, max_tokens: int) -> None:
        self.corpus, self.tokenizer, self.max_tokens = corpus, tokenizer, max_tokens
        self.cache: dict[int, list[int]] = {}

    def __call__(self, chunk_id: int | None) -> list[int]:
        tok = self.tokenizer
        if chunk_id is None:  # the null document: nothing between the markers
            return [tok.cls_token_id, tok.sep_token_id]
        if chunk_id not in self.cache:
            body = tok(
                self.corpus.by_id[chunk_id].text,
                add_special_tokens=False,
                truncation=True,
                max_length=self.max_tokens - 2,
            )["input_ids"]
            self.cache[chunk_id] = [tok.cls_token_id, *body, tok.sep_token_id]
        return self.cache[chunk_id]


def realm_batch(examples: list[MaskedExample], retrieved: list[list[int]], docs: DocumentTokens, pad_id: int):
    """Tensors for Realm.realm_loss: the null document first, then each example's retrieved chunks."""
    z = 1 + min(len(r) for r in retrieved)
    query = [e.input_ids for e in examples]
    doc_rows, reader_rows, type_rows, label_rows = [], [], [], []
    for example, found in zip(examples, retrieved):
        for chunk_id in [None, *found[: z - 1]]:
            d = docs(chunk_id)
            doc_rows.append(d)
            reader_rows.append(example.input_ids + d[1:])  # [CLS] x [SEP] z [SEP]
            type_rows.append([0] * len(example.input_ids) + [1] * (len(d) - 1))
            label_rows.append(example.labels + [IGNORE] * (len(d) - 1))
    b = len(examples)
    doc_ids, reader_ids = _pad(doc_rows, pad_id), _pad(reader_rows, pad_id)
    return {
        "query_ids": _pad(query, pad_id),
        "query_mask": (_pad(query, pad_id) != pad_id).long(),
        "doc_ids": doc_ids.view(b, z, -1),
        "doc_mask": (doc_ids != pad_id).long().view(b, z, -1),
        "reader_ids": reader_ids.view(b, z, -1),
        "reader_mask": (reader_ids != pad_id).long().view(b, z, -1),
        "reader_types": _pad(type_rows, 0).view(b, z, -1),
        "labels": _pad(label_rows, IGNORE).view(b, z, -1),
    }


def _optimizer(model: Realm, config: PretrainConfig) -> torch.optim.Optimizer:
    reader = list(model.reader.parameters()) if model.reader is not None else []
    reader_ids = {id(p) for p in reader}
    rest = [p for p in model.parameters() if id(p) not in reader_ids]
    return torch.optim.AdamW(
        [{"params": rest, "lr": config.lr}, {"params": reader, "lr": config.reader_lr}], weight_decay=0.01
    )


def _schedule(optimizer: torch.optim.Optimizer, warmup: int, steps: int):
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup)) * max(0.1, 1 - step / max(1, steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _encoders(model: Realm) -> list[torch.nn.Module]:
    """The distinct Hugging Face models inside `model` (tower encoders, reader) that can checkpoint their layers."""
    found: list[torch.nn.Module] = []
    for module in (model.query_tower.encoder, model.document_tower.encoder, model.reader):
        if getattr(module, "supports_gradient_checkpointing", False) and all(module is not m for m in found):
            found.append(module)
    return found


def _set_activation_checkpointing(module: torch.nn.Module, enabled: bool) -> None:
    """Turn a Hugging Face model's activation checkpointing on or off (transformers 4 and 5 spell it differently)."""
    if enabled:
        enable = getattr(module, "activation_checkpointing_enable", None) or module.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    else:
        disable = getattr(module, "activation_checkpointing_disable", None) or module.gradient_checkpointing_disable
        disable()
        if getattr(module, "_require_grads_hooks", None):  # transformers 5 hooks the embeddings when enabling
            module.disable_input_require_grads()


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the pages of freed heap memory back to the system.

    glibc keeps what a CPU step frees: tensors under its (adaptive, up to 32 MiB) mmap threshold come from the
    heap, and a REALM step frees gigabytes of them, so without this the resident size between steps climbs by
    the step's transient memory and stays there (MiniLM, 10 reader sequences of <= 457 tokens: 1.5 GB live,
    4.7 GB resident).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def pretrain(
    model: Realm, tokenizer, corpus: Corpus, config: PretrainConfig, *, run_id: int, device: str
) -> dict[str, float]:
    """REALM pre-training of `model` on `corpus`; returns summary figures (the per-step ones go to Postgres)."""
    torch.manual_seed(config.seed)
    amp = config.amp if config.amp is not None else device.startswith("cuda")
    rc = model.config
    maker = ExampleMaker(corpus, tokenizer, max_tokens=rc.max_query_tokens, masking=config.masking, seed=config.seed)
    docs = DocumentTokens(corpus, tokenizer, max_tokens=rc.max_doc_tokens)
    schedule = RefreshSchedule(config.refresh_every, config.adaptive_refresh, config.first_refresh)
    index = MipsIndex(
        corpus, tokenizer, max_tokens=rc.max_doc_tokens, label=f"run{run_id}", asynchronous=config.asynchronous_refresh
    )
    metrics = MetricsLog(run_id, "pretrain")
    summary: dict[str, float] = {}
    checkpointing = config.activation_checkpointing
    if checkpointing is None:
        checkpointing = device.split(":")[0] == "cpu"
    checkpointed = _encoders(model) if checkpointing else []
    try:
        for module in checkpointed:
            _set_activation_checkpointing(module, True)
        if config.ict_steps:
            summary.update(ict_warmup(model, tokenizer, corpus, config, run_id=run_id, device=device))
        if config.reader_warmup_steps:
            summary.update(
                reader_warmup(
                    model, maker, docs, config, pad_id=tokenizer.pad_token_id, run_id=run_id, device=device, amp=amp
                )
            )
        model.train()
        index.refresh(model.document_tower, step=0)
        index.wait()  # the first index is needed before the first step
        optimizer = _optimizer(model, config)
        scheduler = _schedule(optimizer, config.warmup, config.steps)
        tokens, started = 0, time.perf_counter()
        for step in range(1, config.steps + 1):
            index.poll()
            if schedule.due(step, index.launched_at):
                index.refresh(model.document_tower, step=step)
            examples = maker.sample(config.batch_size)
            with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                q = _pad([e.input_ids for e in examples], tokenizer.pad_token_id).to(device)
                vectors = model.embed_queries(q, (q != tokenizer.pad_token_id).long()).float().cpu().numpy()
            retrieved = index.retrieve(vectors, [corpus.trivial(e.chunk_id) for e in examples], k=rc.top_k)
            batch = {k: v.to(device) for k, v in realm_batch(examples, retrieved, docs, tokenizer.pad_token_id).items()}
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                out = model.realm_loss(**batch)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            tokens += int(batch["reader_mask"].sum())
            if device.split(":")[0] == "cpu":
                release_freed_memory()
            if step % config.log_every == 0 or step == config.steps or step == 1:
                elapsed = time.perf_counter() - started
                metrics.log(
                    step,
                    loss=out["loss"].item(),
                    staleness=index.staleness(step),
                    index_version=index.version.id,
                    null_prob=out["null_prob"].item(),
                    retrieval_entropy=out["retrieval_entropy"].item(),
                    utility=out["utility"].item(),
                    scale=model.scale.item(),
                    lr=scheduler.get_last_lr()[0],
                    tokens_per_s=tokens / max(elapsed, 1e-9),
                )
        index.wait()
        losses = [m["loss"] for _, m in metrics.history]
        summary.update(
            {
                "pretrain_steps": config.steps,
                "pretrain_first_loss": losses[0],
                "pretrain_last_loss": float(np.mean(losses[-3:])),
                "refreshes": len(index.created),
                "refresh_seconds": index.seconds,
                "reader_tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9),
                "pretrain_seconds": time.perf_counter() - started,
                "reader_parameters": sum(p.numel() for p in model.reader.parameters()),
            }
        )
        summary["shadow_versions"] = list(index.created)
        return summary
    finally:
        for module in checkpointed:
            _set_activation_checkpointing(module, False)
        metrics.flush()
        index.close()


UTILITY_WINDOW = 10  # steps averaged when deciding that the reader can read


def reader_warmup(
    model: Realm,
    maker: ExampleMaker,
    docs: DocumentTokens,
    config: PretrainConfig,
    *,
    pad_id: int,
    run_id: int,
    device: str,
    amp: bool,
) -> dict:
    """Train the reader alone: first on masked chunks with the null document only, then on the same task beside
    a chunk that defines the masked name (z*), logging utility = log p(y|z*,x) - log p(y|null,x) per step.
    Stops once the mean utility of the last UTILITY_WINDOW steps reaches `reader_target_utility`; the retriever
    is untouched."""
    if model.reader is None:
        raise ValueError("the reader warm-up needs a model built with its reader")
    metrics = MetricsLog(run_id, "reader")
    optimizer = torch.optim.AdamW(model.reader.parameters(), lr=config.reader_lr, weight_decay=0.01)
    null_steps = config.reader_warmup_steps // 2
    rng = random.Random(config.seed + 2)
    utilities: list[float] = []
    reached, step = False, 0
    model.train()
    for step in range(1, config.reader_warmup_steps + 1):
        reading = step > null_steps and maker.masking == "salient"
        examples = [e for e in maker.sample(config.batch_size * 2) if e.answers or not reading][: config.batch_size]
        if not examples:
            raise DatasetError(
                f"no masked name of {maker.corpus.repo!r} is defined in another chunk the reader can read"
            )
        found = [[rng.choice(e.answers)] if reading else [] for e in examples]
        batch = realm_batch(examples, found, docs, pad_id)
        b, z, tr = batch["reader_ids"].shape
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            reader_logp = model.reader_log_likelihood(
                *(
                    batch[k].reshape(b * z, tr).to(device)
                    for k in ("reader_ids", "reader_mask", "reader_types", "labels")
                )
            ).reshape(b, z)  # (B, Z): null document first, then z*
        targets = (batch["labels"][:, 0] != IGNORE).sum(-1).clamp(min=1).to(device)  # (B,)
        # Reading steps learn from z* alone (the null document only measures the utility): beside the null
        # row's gradient, which asks for the same guess with or without z*, MiniLM did not start copying within
        # 30 steps on a toy where it copies within 25 when z* is all it sees.
        trained = reader_logp[:, 1:] if reading else reader_logp
        loss = -(trained.float() / targets[:, None]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.reader.parameters(), 1.0)
        optimizer.step()
        utility = (reader_logp[:, 1] - reader_logp[:, 0]).mean().item() if z > 1 else None
        if utility is not None:
            utilities.append(utility)
        metrics.log(step, reader_loss=loss.item(), utility=utility, reading=float(reading))
        if len(utilities) >= UTILITY_WINDOW and np.mean(utilities[-UTILITY_WINDOW:]) >= config.reader_target_utility:
            reached = True
            break
    metrics.flush()
    window = utilities[-UTILITY_WINDOW:]
    return {
        "reader_warmup_steps": step,
        "reader_utility_first": utilities[0] if utilities else None,
        "reader_utility_last": float(np.mean(window)) if window else None,
        "reader_can_read": reached,
    }


def ict_warmup(model: Realm, tokenizer, corpus: Corpus, config: PretrainConfig, *, run_id: int, device: str) -> dict:
    """Inverse Cloze Task: a few lines of a chunk must retrieve the rest of it among the batch's chunks."""
    rng = random.Random(config.seed + 1)
    amp = config.amp if config.amp is not None else device.startswith("cuda")
    rc = model.config
    candidates = [c for c in corpus.chunks if c.text.count("\n") >= 4]
    if len(candidates) < config.batch_size:
        raise DatasetError(f"{corpus.repo!r} has too few multi-line chunks for an ICT batch of {config.batch_size}")
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("reader.")], lr=config.lr)
    metrics = MetricsLog(run_id, "ict")
    model.train()
    losses = []
    for step in range(1, config.ict_steps + 1):
        queries, contexts = [], []
        for chunk in rng.sample(candidates, config.batch_size):
            lines = chunk.text.splitlines()
            width = rng.randint(1, 3)
            at = rng.randrange(1, max(2, len(lines) - width))
            queries.append("\n".join(lines[at : at + width]))
            # ICT keeps the sentence in its context 10% of the time, so lexical overlap still counts for something.
            rest = lines if rng.random() < 0.1 else lines[:at] + lines[at + width :]
            contexts.append("\n".join(rest))
        q = tokenizer(queries, padding=True, truncation=True, max_length=rc.max_query_tokens, return_tensors="pt").to(
            device
        )
        d = tokenizer(contexts, padding=True, truncation=True, max_length=rc.max_doc_tokens, return_tensors="pt").to(
            device
        )
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            loss = model.contrastive_loss(
                model.embed_queries(q["input_ids"], q["attention_mask"]),
                model.embed_documents(d["input_ids"], d["attention_mask"]),
                torch.arange(len(queries), device=device),
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % config.log_every == 0 or step == config.ict_steps:
            metrics.log(step, loss=loss.item())
    metrics.flush()
    return {"ict_steps": config.ict_steps, "ict_first_loss": losses[0], "ict_last_loss": float(np.mean(losses[-3:]))}
