"""Training a cross-encoder reranker on a repository's own questions: the `train-reranker` job.

A reranker reorders the first GROUNDING_RERANK_CANDIDATES fused hits of a search (grounding.search.rerank).
No cross-encoder trained on code ships with this machine, so one is made from a local encoder (the
default one unless told): its body, and a fresh one-logit head, fine-tuned on the harvested train
questions of the eval index (the repository with those docstrings cut out, so nothing is given away).

Each question's candidates are exactly what serving hands the reranker: the hybrid search's fused
hits, before merging and expansion. The hits that answer it are its positives, the others its hard
negatives. The loss is a softmax over one positive and `group_size - 1` negatives sampled from the
top of the fused ranking. A question whose answer is not among its candidates is left out of
training: the reranker can only reorder what it is given.

As in fine-tuning the retriever, a validation slice of the train split (by file) is reranked every
`eval_every` steps and the best step is kept, together with the weight of the fused order that serving
adds back to the reranker's score (grounding.search.rerank.combined): a cross-encoder made from a bi-encoder's
body and a thousand questions may know less than the first stage, and then should only nudge it.

The gate then compares held-out MRR of hybrid search reranked by the new model against what serving
does now (hybrid alone, or reranked by the reranker promoted before) and promotes only a better one, the
lower bound of the gain's paired bootstrap interval above the margin (training.pipeline.gate):
searches of the repository then use it, when GROUNDING_RERANKER is `promoted` (the default).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from grounding import db, store
from grounding.config import get_settings
from grounding.errors import DatasetError
from grounding.evaluation.datasets import Question
from grounding.evaluation.eval_index import training_splits
from grounding.evaluation.metrics import answers, evaluate, record_run
from grounding.models.checkpoint import default_device
from grounding.search.rerank import CONFIG_FILE, CrossEncoderReranker, Reranker, combined, passage
from grounding.search.retrieve import search
from grounding.training.checkpoint import load_tokenizer
from grounding.training.finetune import validation_split
from grounding.training.pipeline import GateDecision, gate
from grounding.training.runs import MetricsLog, recorded_run, update_run

log = logging.getLogger(__name__)

KIND = "reranker"  # training_runs.kind
# How much of the fused order to keep (grounding.search.rerank.combined), chosen with the step on validation.
PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class RerankerConfig:
    base: str | None = None  # local encoder directory to start from; None: the default encoder
    steps: int = 150
    batch_size: int = 8  # questions per step
    group_size: int = 4  # one positive and group_size - 1 hard negatives per question
    negatives_from_top: int = 15  # negatives are sampled from this many best-fused wrong hits
    max_tokens: int = 192  # question and passage together; the passage is cut, never the question
    lr: float = 3e-5
    warmup_steps: int = 15
    eval_every: int = 50
    validation_percent: int = 15  # of the train split's files
    min_validation: int = 10
    max_validation: int = 60  # questions reranked at each validation (each costs `candidates` pairs)
    log_every: int = 10
    seed: int = 0
    amp: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Candidates:
    """A question and the fused hits serving would give the reranker for it, best fused first."""

    question: str
    path: str  # of the gold span: the validation split is by file
    passages: tuple[str, ...]
    relevant: tuple[bool, ...]

    @property
    def trainable(self) -> bool:
        return any(self.relevant) and not all(self.relevant)


@dataclass(frozen=True)
class RerankerReport:
    run_id: int
    repo: str
    checkpoint: str
    decision: GateDecision
    metrics: dict


def candidates_for(repo: str, questions: Sequence[Question], *, n: int) -> list[Candidates]:
    """Each question's first `n` fused hybrid hits of `repo`, marked by whether they answer it."""
    out = []
    for q in questions:
        hits = search(repo, q.question, k=n, mode="hybrid", rerank=False, merge=False, expand=False)
        out.append(
            Candidates(q.question, q.path, tuple(passage(h) for h in hits), tuple(answers(h.citation, q) for h in hits))
        )
    return out


def reranked_mrr(
    reranker: Reranker | None, examples: Sequence[Candidates], *, k: int = 10, prior_weight: float = 0.0
) -> float:
    """MRR@k of the examples' candidates in the reranker's order, or in the fused order without one."""
    scores = None if reranker is None else [reranker.score(ex.question, ex.passages) for ex in examples]
    return mrr_of(examples, scores, k=k, prior_weight=prior_weight)


def mrr_of(
    examples: Sequence[Candidates], scores: Sequence[Sequence[float]] | None, *, k: int = 10, prior_weight: float = 0.0
) -> float:
    """MRR@k with each example's candidates ordered as serving orders them given these reranker scores."""
    total = 0.0
    for n, ex in enumerate(examples):
        order = list(range(len(ex.passages)))
        if scores is not None:
            final = [combined(s, i, prior_weight) for i, s in enumerate(scores[n])]
            order.sort(key=lambda i: -final[i])  # stable: ties keep the fused order, as serving does
        rank = next((r for r, i in enumerate(order[:k], 1) if ex.relevant[i]), None)
        total += 1 / rank if rank else 0.0
    return total / len(examples) if examples else 0.0


def build_cross_encoder(base: str):
    """A one-logit sequence classifier: the encoder's body from `base`, a freshly initialised head."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier weights newly initialised" is the point, not a warning
    try:
        return AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)


def finetune_reranker(
    model, tokenizer, examples: Sequence[Candidates], config: RerankerConfig, *, run_id: int, device: str
) -> dict:
    """Train `model` on the examples' positives against their hard negatives; keep the best validation step."""
    rng = random.Random(config.seed)
    train, validation = validation_split(list(examples), config.validation_percent, minimum=config.min_validation)
    train = [ex for ex in train if ex.trainable]
    validation = rng.sample(validation, min(len(validation), config.max_validation))
    if len(train) < 2:
        raise DatasetError(
            f"{len(train)} training question(s) have both a right and a wrong hit among their candidates: "
            "too few to train a reranker"
        )
    torch.manual_seed(config.seed)
    amp = config.amp if config.amp is not None else device.startswith("cuda")
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    scorer = CrossEncoderReranker.from_model(model, tokenizer, max_tokens=config.max_tokens, device=device)
    metrics = MetricsLog(run_id, "reranker")
    batch_size = min(config.batch_size, len(train))
    best = (-1.0, 0, None, 0.0)  # (validation MRR, step, state, prior weight); step 0's head is random: not one
    fused_val = reranked_mrr(None, validation) if validation else None
    started, losses = time.perf_counter(), []
    for step in range(1, config.steps + 1):
        model.train()
        questions, passages = [], []
        for ex in rng.sample(train, batch_size):
            positive = rng.choice([p for p, rel in zip(ex.passages, ex.relevant) if rel])
            wrong = [p for p, rel in zip(ex.passages, ex.relevant) if not rel][: config.negatives_from_top]
            group = [positive, *rng.sample(wrong, min(config.group_size - 1, len(wrong)))]
            group += [group[-1]] * (config.group_size - len(group))  # a short group repeats its last negative
            questions += [ex.question] * config.group_size
            passages += group
        encoded = tokenizer(
            questions,
            passages,
            padding=True,
            truncation="only_second",
            max_length=config.max_tokens,
            return_tensors="pt",
        ).to(device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            logits = model(**encoded).logits.float().view(batch_size, config.group_size)  # (B, group)
        targets = torch.zeros(batch_size, dtype=torch.long, device=device)  # the positive is first in its group
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        val = val_prior = weight = None
        if validation and (step % config.eval_every == 0 or step == config.steps):
            model.eval()
            scores = [scorer.score(ex.question, ex.passages) for ex in validation]
            by_weight = {w: mrr_of(validation, scores, prior_weight=w) for w in PRIOR_WEIGHTS}
            weight = max(by_weight, key=lambda w: (by_weight[w], -w))  # a tie: the least fused order kept
            val, val_prior = by_weight[0.0], by_weight[weight]
            if val_prior > best[0]:
                best = (val_prior, step, {k: v.detach().clone() for k, v in model.state_dict().items()}, weight)
        if step % config.log_every == 0 or step in (1, config.steps) or val is not None:
            with torch.no_grad():
                group_acc = (logits.argmax(1) == 0).float().mean().item()
            metrics.log(
                step,
                loss=loss.item(),
                group_accuracy=group_acc,
                lr=schedule.get_last_lr()[0],
                questions_per_s=step * batch_size / (time.perf_counter() - started),
                val_mrr=val,
                val_mrr_with_prior=val_prior,
                prior_weight=weight,
                val_mrr_fused=fused_val if val is not None else None,
            )
    metrics.flush()
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    return {
        "reranker_steps": config.steps,
        "reranker_best_step": best[1] if validation else config.steps,
        "reranker_val_mrr_fused": fused_val,
        "reranker_val_mrr_best": best[0] if validation else None,
        "reranker_prior_weight": best[3],
        "reranker_train_questions": len(train),
        "reranker_validation_questions": len(validation),
        "reranker_first_loss": losses[0],
        "reranker_last_loss": sum(losses[-5:]) / len(losses[-5:]),
        "reranker_seconds": time.perf_counter() - started,
    }


def _lr_factor(step: int, config: RerankerConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_reranker(
    directory: Path, model, tokenizer, config: RerankerConfig, *, repo: str, run_id: int, prior_weight: float = 0.0
) -> Path:
    """Weights and tokenizer as a Hugging Face directory (any cross-encoder loader reads it), with our config."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    meta = {
        "config": config.to_dict(),
        "repo": repo,
        "run_id": run_id,
        "max_tokens": config.max_tokens,
        "prior_weight": prior_weight,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return directory


def promoted_reranker(repo: str) -> str | None:
    """The checkpoint of the newest reranker promoted for `repo`, if any."""
    with db.get_engine().connect() as conn:
        return store.promoted_checkpoint(conn, repo, kind=KIND)


def train_reranker(
    repo: str,
    *,
    harvester: str = "docstrings",
    config: RerankerConfig | None = None,
    margin: float = 0.0,
    k: int = 10,
    device: str | None = None,
) -> RerankerReport:
    """Train a cross-encoder on `repo`'s harvested train questions; promote it only if held-out MRR improves."""
    device = device or default_device()
    config = config or RerankerConfig()
    settings = get_settings()
    base = config.base or settings.encoder
    config = RerankerConfig(**{**config.to_dict(), "base": base})
    run_config = {
        "reranker": config.to_dict(),
        "harvester": harvester,
        "margin": margin,
        "candidates": settings.rerank_candidates,
    }
    with recorded_run(repo, kind=KIND, config=run_config, device=device) as run_id:
        t0 = time.perf_counter()
        index, train_q, heldout = training_splits(repo, harvester=harvester)
        examples = candidates_for(index.name, train_q, n=settings.rerank_candidates)
        metrics: dict = {
            "eval_questions_train": len(train_q),
            "eval_questions_heldout": len(heldout),
            "train_answer_in_candidates": sum(any(ex.relevant) for ex in examples) / len(examples),
        }
        model = build_cross_encoder(base)
        tokenizer = load_tokenizer(base)
        metrics.update(finetune_reranker(model, tokenizer, examples, config, run_id=run_id, device=device))
        directory = save_reranker(
            settings.runs_dir / str(run_id) / "reranker",
            model.cpu(),
            tokenizer,
            config,
            repo=repo,
            run_id=run_id,
            prior_weight=metrics["reranker_prior_weight"],
        )
        update_run(run_id, checkpoint=str(directory))
        del model
        current = promoted_reranker(repo)
        served = {"hybrid": False, "hybrid+current": current, "hybrid+candidate": str(directory)}
        scores, ranks = {}, {}
        for name, rerank in served.items():
            if rerank is None:
                continue
            result = evaluate(index.name, heldout, k=k, mode="hybrid", rerank=rerank)
            record_run(repo, result, dataset=harvester, split="heldout")
            scores[name] = result.metrics
            ranks[name] = result.ranks
        baseline = "hybrid+current" if current else "hybrid"
        decision = gate(ranks["hybrid+candidate"], ranks[baseline], k=k, margin=margin)
        metrics.update(heldout=scores, baseline=baseline, gate=decision.to_dict(), seconds=time.perf_counter() - t0)
        update_run(
            run_id, decision="promoted" if decision.promoted else "retired", reason=decision.reason, metrics=metrics
        )
        log.info("reranker run %d on %s: %s", run_id, repo, decision.reason)
        return RerankerReport(run_id, repo, str(directory), decision, metrics)
