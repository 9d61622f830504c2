"""Train RETRO on a repository and measure it in bits per byte, with retrieval, without, and against a baseline.

The data: a byte-level BPE tokenizer of the repository (trained once, then reused), the retrieval
database of m-token chunks with frozen-encoder embeddings, and each chunk's k neighbours from other
train files (held-out files are never retrievable). RETRO and a baseline decoder of the same size
without CCA train on the same sequences for the same steps; held-out bits per byte are then
measured for RETRO with its neighbours, RETRO with retrieval off, the baseline, and the three
restricted to chunks that share fewer than 8 contiguous tokens with their neighbours.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch.nn import functional as F

from grounding.config import get_settings
from grounding.index import retro_db
from grounding.index.lm_tokenizer import LMTokenizer, load_tokenizer, train_tokenizer
from grounding.models.checkpoint import default_device, save_retro
from grounding.models.retro import Retro, RetroConfig, bits_per_byte, lm_loss
from grounding.training.retro_data import (
    ChunkGrid,
    batch_tensors,
    build_grid,
    low_overlap_rows,
    neighbour_quality,
    sequences,
)
from grounding.training.runs import MetricsLog, recorded_run, update_run

log = logging.getLogger(__name__)

MIN_COPYABLE = 0.10  # of held-out tokens whose 4-gram a neighbour holds: below it, retrieval has little to offer

H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM, the denominator of model FLOP utilisation


@dataclass(frozen=True)
class RetroTrainConfig:
    steps: int = 2000
    batch_size: int = 8
    chunks_per_sequence: int = 16  # 1024 tokens at m = 64
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    seed: int = 0
    vocab_size: int = 8192  # of the tokenizer trained on the repository
    amp: bool | None = None  # bf16 autocast; None: on CUDA
    compile: bool | None = None  # torch.compile; None: on CUDA
    baseline: bool = True  # also train the decoder without CCA on the same tokens

    def to_dict(self) -> dict:
        return asdict(self)


def tiny_model(vocab_size: int, pad_id: int, **overrides) -> RetroConfig:
    """A configuration that trains on a CPU in minutes: 4 layers, CCA in layers 2 and 4."""
    base = dict(d_model=128, n_layers=4, n_heads=4, max_seq_len=1024, cca_start=2, cca_every=2, enc_layers=2)
    return RetroConfig(vocab_size=vocab_size, pad_id=pad_id, **{**base, **overrides})


@dataclass(frozen=True)
class RetroData:
    tokenizer: LMTokenizer
    database: retro_db.RetroDatabase
    train: ChunkGrid
    heldout: ChunkGrid
    byte_lengths: np.ndarray  # (V,) UTF-8 bytes of each token


@dataclass(frozen=True)
class RetroReport:
    run_id: int
    repo: str
    checkpoint: str
    database: int
    bits_per_byte: dict[str, float]
    metrics: dict = field(default_factory=dict)


# --- data ------------------------------------------------------------------------------------------


def repository_tokenizer(repo: str, *, vocab_size: int, path: str | None = None) -> LMTokenizer:
    """A local tokenizer path, else the one this repository's last database used, else one trained on it."""
    if path:
        return load_tokenizer(path)
    try:
        return load_tokenizer(retro_db.latest_database(repo).tokenizer)
    except Exception as err:  # no database yet, or its tokenizer directory is gone: train a new one
        log.info("training a tokenizer for %s (%s)", repo, err)
    texts = [text for _, text in retro_db.repository_texts(repo, split="train")]  # held-out files stay unseen
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tokenizer.save(get_settings().retro_dir(repo) / f"tokenizer-{stamp}")
    return tokenizer


def token_byte_lengths(tokenizer: LMTokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for special tokens), for bits per byte."""
    out = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for i in range(tokenizer.vocab_size):
        out[i] = len(tokenizer.token_bytes(i))
    return out


def prepare(
    repo: str,
    *,
    model: RetroConfig | None = None,
    db_config: retro_db.RetroDbConfig | None = None,
    tokenizer_path: str | None = None,
    vocab_size: int = 8192,
    aligned: bool = True,
) -> RetroData:
    """Tokenizer, database, neighbours and the train/held-out chunk grids of a repository; with `aligned`, each
    neighbour is the window of its file aligned to the chunk that retrieved it (retro_db.aligned_window)."""
    db_config = db_config or retro_db.RetroDbConfig()
    tokenizer = repository_tokenizer(repo, vocab_size=vocab_size, path=tokenizer_path)
    database = retro_db.build_database(repo, tokenizer, config=db_config)
    neighbour_ids = retro_db.neighbours(database, config=db_config)
    m, k = db_config.chunk_tokens, db_config.neighbours
    if aligned:
        neighbour_ids, tokens = retro_db.aligned_neighbours(
            retro_db.database_chunks(database), neighbour_ids, r=2 * m, pad=tokenizer.pad_id
        )
    else:
        wanted = sorted({n for ids in neighbour_ids.values() for n in ids})
        tokens = {nb.chunk_id: nb.tokens for nb in retro_db.neighbour_tokens(database, wanted)}
    grids = {}
    for split in ("train", "heldout"):
        chunks = retro_db.database_chunks(database, split=split)
        grids[split] = build_grid(
            chunks, neighbour_ids, tokens, chunk_len=m, neighbours=k, retrieval_len=2 * m, pad_id=tokenizer.pad_id
        )
    if not len(grids["train"]) or not len(grids["heldout"]):
        from grounding.errors import DatasetError

        raise DatasetError(
            f"{repo!r} has {len(grids['train'])} train and {len(grids['heldout'])} held-out chunks: "
            "RETRO needs files on both sides of the split"
        )
    return RetroData(tokenizer, database, grids["train"], grids["heldout"], token_byte_lengths(tokenizer))


# --- training ------------------------------------------------------------------------------------


def _uses_retrieval(model: torch.nn.Module) -> bool:
    """RETRO with CCA layers, or a retro-fitted model: both read neighbours."""
    layers = getattr(model.config, "cca_layers", None)
    return bool(layers) if layers is not None else bool(getattr(model.config, "layer_indices", ()))


def _lr(step: int, config: RetroTrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def train_model(
    model: torch.nn.Module, grid: ChunkGrid, config: RetroTrainConfig, *, device: str, metrics: MetricsLog | None = None
) -> dict[str, float]:
    """Train on random sequences of the grid, with neighbours when the model has CCA; returns throughput."""
    rng = random.Random(config.seed)  # the same order for RETRO and the baseline
    torch.manual_seed(config.seed)
    cuda = device.startswith("cuda")
    amp = config.amp if config.amp is not None else cuda
    model.to(device).train()
    forward = torch.compile(model) if (config.compile if config.compile is not None else cuda) else model
    trainable = [p for p in model.parameters() if p.requires_grad]  # a retro-fitted base stays frozen
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
        fused=cuda,
    )
    seqs = [s for s in sequences(grid, config.chunks_per_sequence) if len(s) == config.chunks_per_sequence]
    if not seqs:
        seqs = sequences(grid, config.chunks_per_sequence)
    use_neighbours = _uses_retrieval(model)
    tokens_seen, started, losses = 0, time.perf_counter(), []
    for step in range(config.steps):
        rows = [seqs[rng.randrange(len(seqs))] for _ in range(config.batch_size)]
        idx, targets, nb = batch_tensors(grid, rows, with_neighbours=use_neighbours)
        idx, targets = idx.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        nb = nb.to(device, non_blocking=True) if nb is not None else None
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            logits = forward(idx, nb)
        count = (targets != grid.pad_id).sum().clamp(min=1)
        loss = lm_loss(logits, targets, ignore=grid.pad_id) / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        tokens_seen += int(idx.numel())
        losses.append(loss.item())
        if metrics is not None and (step % config.log_every == 0 or step == config.steps - 1):
            elapsed = time.perf_counter() - started
            metrics.log(step, loss=losses[-1], lr=_lr(step, config), tokens_per_s=tokens_seen / max(elapsed, 1e-9))
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    tokens_per_s = tokens_seen / max(elapsed, 1e-9)
    # 6N FLOPs per token (forward and backward) plus attention, as in the PaLM appendix.
    cfg = model.config
    parameters = sum(p.numel() for p in model.parameters())
    context = config.chunks_per_sequence * grid.chunk_len
    layers, width = getattr(cfg, "n_layers", 0), getattr(cfg, "d_model", 0)  # 0: attention not counted
    flops_per_token = 6 * parameters + 12 * layers * width * context
    if metrics is not None:
        metrics.flush()
    return {
        "first_loss": float(np.mean(losses[:5])),
        "last_loss": float(np.mean(losses[-5:])),
        "tokens_per_s": tokens_per_s,
        "seconds": elapsed,
        "model_flops_per_s": tokens_per_s * flops_per_token,
        "mfu_h100": tokens_per_s * flops_per_token / H100_BF16_FLOPS if cuda else None,
        "parameters": parameters,
        "trainable_parameters": sum(p.numel() for p in trainable),
    }


@torch.no_grad()
def chunk_losses(
    model: torch.nn.Module,
    grid: ChunkGrid,
    byte_lengths: np.ndarray,
    *,
    chunks_per_sequence: int,
    retrieval: bool,
    device: str,
    batch_size: int = 8,
    amp: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nats, bytes, tokens) per grid row, each target token counted in the chunk it lies in: one pass of the
    model, any subset of chunks summed from it afterwards."""
    model.to(device).eval()
    lengths = torch.from_numpy(byte_lengths).to(device)
    nats, n_bytes, n_tokens = (np.zeros(len(grid)) for _ in range(3))
    m = grid.chunk_len
    seqs = sequences(grid, chunks_per_sequence)
    for lo in range(0, len(seqs), batch_size):
        rows = seqs[lo : lo + batch_size]
        idx, targets, nb = batch_tensors(grid, rows, with_neighbours=retrieval and _uses_retrieval(model))
        idx, targets = idx.to(device), targets.to(device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            logits = model(idx, nb.to(device) if nb is not None else None)
        per = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=grid.pad_id,
            reduction="none",
        ).reshape(targets.shape)
        real = targets != grid.pad_id
        size = torch.where(real, lengths[targets.clamp(min=0)], 0)
        for b, r in enumerate(rows):
            # target p is token p+1, which lies in chunk (p+1) // m; the last position has no target
            owner = torch.arange(1, len(r) * m + 1, device=per.device).clamp(max=len(r) * m - 1) // m
            for values, out in ((per[b], nats), (size[b], n_bytes), (real[b], n_tokens)):
                sums = torch.zeros(len(r), dtype=torch.float64, device=per.device)
                sums.index_add_(0, owner, values[: len(r) * m].double())
                out[r] += sums.cpu().numpy()
    return nats, n_bytes, n_tokens


def evaluate_bpb(
    model: torch.nn.Module,
    grid: ChunkGrid,
    byte_lengths: np.ndarray,
    *,
    chunks_per_sequence: int,
    retrieval: bool,
    keep: np.ndarray | None = None,
    device: str,
    batch_size: int = 8,
) -> dict[str, float]:
    """Held-out bits per byte over every target token (or those in `keep` chunks)."""
    nats, n_bytes, n_tokens = chunk_losses(
        model,
        grid,
        byte_lengths,
        chunks_per_sequence=chunks_per_sequence,
        retrieval=retrieval,
        device=device,
        batch_size=batch_size,
    )
    if keep is not None:
        nats, n_bytes, n_tokens = nats[keep], n_bytes[keep], n_tokens[keep]
    return {
        "bits_per_byte": bits_per_byte(float(nats.sum()), int(n_bytes.sum())),
        "tokens": int(n_tokens.sum()),
        "bytes": int(n_bytes.sum()),
    }


def heldout_bpb(
    model: torch.nn.Module, data: RetroData, chunks_per_sequence: int, *, retrieval: bool, keep, device: str
) -> float:
    """Bits per byte of `model` on the held-out chunks (those in `keep`, when given)."""
    return evaluate_bpb(
        model,
        data.heldout,
        data.byte_lengths,
        chunks_per_sequence=chunks_per_sequence,
        retrieval=retrieval,
        keep=keep,
        device=device,
    )["bits_per_byte"]


# --- the job ---------------------------------------------------------------------------------------


def train_retro(
    repo: str,
    *,
    model: RetroConfig | None = None,
    train_config: RetroTrainConfig | None = None,
    db_config: retro_db.RetroDbConfig | None = None,
    tokenizer_path: str | None = None,
    device: str | None = None,
) -> RetroReport:
    """Build the data, train RETRO (and the baseline), measure held-out bits per byte, store everything."""
    device = device or default_device()
    train_config = train_config or RetroTrainConfig()
    db_config = db_config or retro_db.RetroDbConfig()
    config = {"train": train_config.to_dict(), "db": asdict(db_config), "model": model.to_dict() if model else None}
    with recorded_run(repo, kind="retro", config=config, device=device) as run_id:
        data = prepare(
            repo,
            db_config=db_config,
            tokenizer_path=tokenizer_path,
            vocab_size=train_config.vocab_size,
            aligned=model.aligned if model is not None else True,
        )
        tok = data.tokenizer
        if model is None:
            model = (
                tiny_model(tok.vocab_size, tok.pad_id) if device == "cpu" else RetroConfig(tok.vocab_size, tok.pad_id)
            )
        model = replace(
            model,
            vocab_size=tok.vocab_size,
            pad_id=tok.pad_id,
            chunk_len=db_config.chunk_tokens,
            neighbours=db_config.neighbours,
            retrieval_len=2 * db_config.chunk_tokens,
            max_seq_len=max(model.max_seq_len, train_config.chunks_per_sequence * db_config.chunk_tokens),
        )
        update_run(run_id, metrics={"model": model.to_dict(), "database": data.database.id})
        directory = get_settings().runs_dir / str(run_id)
        metrics: dict = {"train_chunks": len(data.train), "heldout_chunks": len(data.heldout)}
        # Before training: what the neighbours hold that the model could copy bounds what retrieval can gain.
        quality = neighbour_quality(data.heldout, train_config.chunks_per_sequence)
        metrics["neighbour_quality"] = quality
        log.info(
            "%s: held-out neighbours share 8+ tokens with %.1f%% of chunks; %.1f%% of tokens are copyable",
            repo,
            100 * quality["share"],
            100 * quality["copyable"],
        )
        if quality["copyable"] < MIN_COPYABLE:
            log.warning(
                "%s: the neighbours hold little to copy (%.1f%% of held-out tokens, under %.0f%%): retrieval can "
                "gain little here; the report's bits per byte will say so",
                repo,
                100 * quality["copyable"],
                100 * MIN_COPYABLE,
            )

        retro = Retro(model)
        metrics["retro_train"] = train_model(
            retro, data.train, train_config, device=device, metrics=MetricsLog(run_id, "retro")
        )
        checkpoint = save_retro(
            directory / "retro.pt",
            retro,
            tokenizer=tok.name,
            database=data.database.id,
            step=train_config.steps,
            extra={"retriever": db_config.retriever},  # generation finds neighbours as training did
        )
        update_run(run_id, checkpoint=str(checkpoint))
        baseline = None
        if train_config.baseline:
            baseline = Retro(replace(model, use_cca=False))
            metrics["baseline_train"] = train_model(
                baseline,
                data.train,
                train_config,
                device=device,
                metrics=MetricsLog(run_id, "baseline"),
            )
            save_retro(
                directory / "baseline.pt",
                baseline,
                tokenizer=tok.name,
                database=data.database.id,
                step=train_config.steps,
            )

        cps = train_config.chunks_per_sequence
        keep = low_overlap_rows(data.heldout, cps)
        metrics["low_overlap_fraction"] = float(keep.mean())

        def bpb(m: Retro, retrieval: bool, subset: np.ndarray | None = None) -> float:
            return heldout_bpb(m, data, cps, retrieval=retrieval, keep=subset, device=device)

        figures = {
            "retro_retrieval": bpb(retro, True),
            "retro_no_retrieval": bpb(retro, False),
            "retro_retrieval_low_overlap": bpb(retro, True, keep),
            "retro_no_retrieval_low_overlap": bpb(retro, False, keep),
        }
        if baseline is not None:
            figures["baseline"] = bpb(baseline, False)
            figures["baseline_low_overlap"] = bpb(baseline, False, keep)
        metrics["bits_per_byte"] = figures
        log_eval = MetricsLog(run_id, "eval")
        log_eval.log(train_config.steps, **figures)
        log_eval.flush()
        update_run(run_id, metrics=metrics)
        return RetroReport(run_id, repo, str(checkpoint), data.database.id, figures, metrics)


# --- RETRO-fitting -------------------------------------------------------------------------------------


def train_retrofit(
    repo: str,
    base: str,
    *,
    train_config: RetroTrainConfig | None = None,
    db_config: retro_db.RetroDbConfig | None = None,
    device: str | None = None,
) -> RetroReport:
    """RETRO-fit the local causal LM at `base` on `repo`: frozen base, trained CCA and neighbour encoder.

    The database is cut with the base's own tokenizer. Retrieval off is the base model itself (the
    inserted CCA adds nothing without neighbours), so the two figures compare base and retro-fitted.
    """
    from transformers import AutoModelForCausalLM

    from grounding.models.retrofit import RetrofitConfig, RetroFitted

    device = device or default_device()
    train_config = train_config or RetroTrainConfig(baseline=False)
    db_config = db_config or retro_db.RetroDbConfig()
    config = {"train": train_config.to_dict(), "db": asdict(db_config), "base": base}
    with recorded_run(repo, kind="retrofit", config=config, device=device) as run_id:
        data = prepare(repo, db_config=db_config, tokenizer_path=base, aligned=False)  # as RetrofitConfig reads them
        lm = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
        m = db_config.chunk_tokens
        model = RetroFitted(
            lm,
            RetrofitConfig.from_base(
                lm,
                base_path=base,
                chunk_len=m,
                neighbours=db_config.neighbours,
                retrieval_len=2 * m,
                pad_id=data.tokenizer.pad_id,
            ),
        )
        metrics: dict = {"train_chunks": len(data.train), "heldout_chunks": len(data.heldout)}
        metrics["retrofit_train"] = train_model(
            model, data.train, train_config, device=device, metrics=MetricsLog(run_id, "retrofit")
        )
        directory = get_settings().runs_dir / str(run_id)
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint = directory / "retrofit.pt"
        torch.save(
            {
                "kind": "retrofit",
                "config": model.config.to_dict(),
                "new_state": model.new_state_dict(),
                "tokenizer": data.tokenizer.name,
                "database": data.database.id,
                "step": train_config.steps,
            },
            checkpoint,
        )
        update_run(run_id, checkpoint=str(checkpoint))
        cps = train_config.chunks_per_sequence
        keep = low_overlap_rows(data.heldout, cps)

        def bpb(retrieval: bool, subset: np.ndarray | None = None) -> float:
            return heldout_bpb(model, data, cps, retrieval=retrieval, keep=subset, device=device)

        figures = {
            "retrofit_retrieval": bpb(True),
            "base_no_retrieval": bpb(False),
            "retrofit_retrieval_low_overlap": bpb(True, keep),
            "base_no_retrieval_low_overlap": bpb(False, keep),
        }
        metrics["bits_per_byte"] = figures
        log_eval = MetricsLog(run_id, "eval")
        log_eval.log(train_config.steps, **figures)
        log_eval.flush()
        update_run(run_id, metrics=metrics)
        return RetroReport(run_id, repo, str(checkpoint), data.database.id, figures, metrics)
