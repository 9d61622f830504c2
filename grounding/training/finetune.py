"""Fine-tuning the retriever on (question, code) pairs: contrastive, with in-batch and retrieved hard negatives.

Two settings, as in the papers:
- `query` (REALM's): the document tower and the index stay fixed; only the query tower (and the
  inverse temperature) learn. Documents are scored by their stored index vectors, so the index the
  model is served with is exactly the one it was trained against, and no reindex is needed. Since the
  documents do not move, every step's softmax runs over the whole corpus (`negatives="corpus"`, the
  default): 100k fixed vectors are one (B, 100k) matrix product, and no negative is missed.
- `both`: the two towers learn; documents are re-embedded with gradients, and the corpus must be
  reindexed with the new document tower afterwards (the pipeline does it).

With `both`, each validation re-embeds the corpus with the document tower of that step first: the best step
is chosen against the index it would be served with, not the step-0 one.

Not every other chunk is a negative: a question's other gold chunks, copies and overlaps of its answer,
and other definitions of the same name (overrides, re-implementations) are masked out (`not_negatives`).
Beside the harvested questions, each train-file definition's name split into words asks for it
(`name_pairs`): self-supervised pairs from the repository itself.

Hard negatives are the chunks the current query tower retrieves from the index that do not answer
the question; they are re-retrieved every `negatives_every` steps as the tower moves.

A few hundred harvested pairs are easy to overfit (measured on requests: train loss 2.0 -> 0.27 while
held-out MRR fell by a quarter), so a validation slice of the train split, by file, is searched
every `eval_every` steps and the best towers seen are the ones kept: step 0, the starting model,
included, so fine-tuning never returns something worse on validation than what it started from.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from grounding.errors import DatasetError
from grounding.evaluation.datasets import Question, split_of
from grounding.lexical import identifier_words
from grounding.models.realm import Realm
from grounding.training.checkpoint import embed_texts
from grounding.training.corpus import Corpus
from grounding.training.mips import MipsIndex
from grounding.training.runs import MetricsLog

TOWERS = ("query", "both")
NEGATIVES = ("corpus", "hard")


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-5
    towers: str = "query"  # query (fixed index) or both (then reindex)
    # corpus: the query tower learns against every chunk's fixed vector at once (a softmax over the whole
    # corpus: cheap when documents do not move); hard: in-batch and retrieved negatives (what `both` uses).
    negatives: str = "corpus"
    name_pairs: bool = True  # also train on each definition's name split into words (train files only)
    hard_negatives: int = 4
    negatives_every: int = 100
    eval_every: int = 25  # validation MRR, and the best towers kept
    validation_percent: int = 15  # of the train split's files
    min_validation: int = 10  # fewer validation questions than this measure nothing: train on all, keep the last
    log_every: int = 10
    seed: int = 0
    amp: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Pair:
    question: str
    gold: tuple[int, ...]  # every chunk answering it (same file, overlapping lines), best first
    path: str
    start_line: int
    end_line: int


def training_pairs(questions: Sequence[Question], corpus: Corpus) -> list[Pair]:
    """Questions whose gold span is in the corpus, with the chunks that answer them."""
    pairs = []
    for q in questions:
        gold = corpus.in_span(q.path, q.start_line, q.end_line)
        if gold:
            pairs.append(Pair(q.question, tuple(c.id for c in gold), q.path, q.start_line, q.end_line))
    return pairs


def name_pairs(corpus: Corpus, *, minimum_words: int = 2) -> list[Pair]:
    """Self-supervised pairs: a definition's name split into words asks for the definition
    (`parse_http_header` -> "parse http header"), from the train split's files only, so that no held-out
    function is learnt by name. Names of one word say too little to be a question."""
    pairs = []
    for c in corpus.chunks:
        if not c.symbol or split_of(c.path) != "train":
            continue
        words = identifier_words(c.symbol.rsplit(".", 1)[-1])
        if len(words) >= minimum_words:
            pairs.append(Pair(" ".join(words), (c.id,), c.path, c.start_line, c.end_line))
    return pairs


def not_negatives(corpus: Corpus, pair: Pair) -> frozenset[int]:
    """Chunks that must not count against a pair's answer: its other gold chunks, the answer's trivial
    neighbours (overlaps, copies), and other definitions of the same name (overrides, re-implementations)."""
    out = set(pair.gold)
    for gold in pair.gold:
        out |= corpus.trivial(gold)
        symbol = corpus.by_id[gold].symbol
        if symbol:
            out.update(corpus.named(symbol.rsplit(".", 1)[-1]))
    return frozenset(out)


def validation_split(pairs: Sequence[Pair], percent: int, *, minimum: int = 10) -> tuple[list[Pair], list[Pair]]:
    """(train, validation) by file, salted apart from the train/held-out split so both are a fair sample."""

    def bucket(path: str) -> int:
        return int.from_bytes(hashlib.sha256(b"validation:" + path.encode()).digest()[:8], "big") % 100

    train = [p for p in pairs if bucket(p.path) >= percent]
    validation = [p for p in pairs if bucket(p.path) < percent]
    if len(validation) < minimum or len(train) < 2:  # too few to measure anything: train on all, keep the last
        return list(pairs), []
    return train, validation


def validation_mrr(model: Realm, tokenizer, pairs: Sequence[Pair], index: MipsIndex, *, k: int = 10) -> float:
    """MRR@k of the query tower over the index, a hit being any gold chunk of the question."""
    model.eval()
    vectors = embed_texts(
        model.query_tower, tokenizer, [p.question for p in pairs], max_tokens=model.config.max_query_tokens
    )
    found = index.retrieve(vectors, [frozenset()] * len(pairs), k=k)
    total = 0.0
    for pair, ids in zip(pairs, found):
        rank = next((r for r, cid in enumerate(ids, 1) if cid in pair.gold), None)
        total += 1 / rank if rank else 0.0
    return total / len(pairs)


def finetune(
    model: Realm,
    tokenizer,
    corpus: Corpus,
    questions: Sequence[Question],
    config: FinetuneConfig,
    *,
    index: MipsIndex,
    run_id: int,
    device: str,
) -> dict[str, float]:
    """Fine-tune `model` on the questions' gold chunks of `corpus`, searching `index` for hard negatives."""
    if config.towers not in TOWERS:
        raise ValueError(f"towers must be query or both, not {config.towers!r}")
    if config.negatives not in NEGATIVES:
        raise ValueError(f"negatives must be corpus or hard, not {config.negatives!r}")
    pairs, validation = validation_split(
        training_pairs(questions, corpus), config.validation_percent, minimum=config.min_validation
    )
    asked = len(pairs)
    if config.name_pairs and len(pairs) >= 2:
        held = {p.path for p in validation}
        seen = {(p.question, p.gold[0]) for p in pairs}
        pairs += [n for n in name_pairs(corpus) if n.path not in held and (n.question, n.gold[0]) not in seen]
    if len(pairs) < 2:
        raise DatasetError(
            f"{len(pairs)} training question(s) found their code in {corpus.repo!r}: too few to fine-tune"
        )
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    amp = config.amp if config.amp is not None else device.startswith("cuda")
    rc = model.config
    both = config.towers == "both"
    for p in model.document_tower.parameters():
        p.requires_grad_(both or model.config.share_towers)
    trainable = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("reader.")]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.01)
    metrics = MetricsLog(run_id, "finetune")
    negatives: dict[int, list[int]] = {}
    fixed: dict[int, np.ndarray] = {}
    batch_size = min(config.batch_size, len(pairs))
    started, losses = time.perf_counter(), []
    best = (-1.0, 0, None)  # (validation MRR, step, state)
    if validation:
        best = (validation_mrr(model, tokenizer, validation, index), 0, _state(model))
        metrics.log(0, val_mrr=best[0])
    whole = config.negatives == "corpus" and not both
    if whole:  # every chunk's fixed vector, read once: each step's softmax runs over all of them
        ids, matrix = _corpus_matrix(index, corpus)
        row_of = {cid: r for r, cid in enumerate(ids)}
        pairs = [p for p in pairs if p.gold[0] in row_of]  # an answer without a vector cannot be a target
        if len(pairs) < 2:
            raise DatasetError(f"the index of {corpus.repo!r} holds vectors for {len(pairs)} training answers")
        batch_size = min(batch_size, len(pairs))
        documents_all = torch.from_numpy(matrix).to(device)  # (N, p)
    keeps = [not_negatives(corpus, p) for p in pairs]  # once: they do not change while training
    if whole:
        excluded = [
            torch.tensor([row_of[c] for c in keep if c in row_of], dtype=torch.long, device=device) for keep in keeps
        ]
    for step in range(1, config.steps + 1):
        if not whole and (step == 1 or step % config.negatives_every == 0):
            negatives = _hard_negatives(model, tokenizer, pairs, keeps, index, config.hard_negatives)
            if not both:
                fixed = _index_vectors(index, pairs, negatives)
        model.train()
        batch = rng.sample(range(len(pairs)), batch_size)
        q = tokenizer(
            [pairs[i].question for i in batch],
            padding=True,
            truncation=True,
            max_length=rc.max_query_tokens,
            return_tensors="pt",
        ).to(device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            queries = model.embed_queries(q["input_ids"], q["attention_mask"])  # (B, p)
            if whole:
                with torch.autocast(device.split(":")[0], enabled=False):  # bf16 scores tie among 100k documents
                    logits = (queries.float() @ documents_all.T) * model.scale.float()  # (B, N)
                targets = torch.tensor([row_of[pairs[i].gold[0]] for i in batch], device=device)
                mask = torch.zeros_like(logits, dtype=torch.bool)
                for r, i in enumerate(batch):
                    mask[r, excluded[i]] = True
                mask[torch.arange(len(batch), device=device), targets] = False
                pool = ids
            else:
                logits, targets, pool, mask = _pool_logits(
                    model,
                    tokenizer,
                    corpus,
                    [pairs[i] for i in batch],
                    [keeps[i] for i in batch],
                    queries,
                    negatives_of=[negatives[i] for i in batch],
                    fixed=None if both else fixed,
                    device=device,
                )
            logits = logits.masked_fill(mask, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        losses.append(loss.item())
        val = None
        if validation and (step % config.eval_every == 0 or step == config.steps):
            if both:  # the documents moved too: validate against the corpus as this step's document tower embeds it
                index.refresh(model.document_tower, step=step)
                index.wait()
            val = validation_mrr(model, tokenizer, validation, index)
            if val > best[0]:
                best = (val, step, _state(model))
        if step % config.log_every == 0 or step in (1, config.steps) or val is not None:
            with torch.no_grad():
                ranks = (logits > logits.gather(1, targets[:, None])).sum(1) + 1
            metrics.log(
                step,
                loss=loss.item(),
                batch_mrr=(1.0 / ranks.float()).mean().item(),
                scale=model.scale.item(),
                pool=len(pool),
                questions_per_s=step * batch_size / (time.perf_counter() - started),
                val_mrr=val,
                val_index_step=index.built_at if val is not None else None,
            )
    metrics.flush()
    for p in model.document_tower.parameters():
        p.requires_grad_(True)
    if best[2] is not None:  # the best validation step, the starting weights (step 0) included
        model.load_state_dict(best[2], strict=False)
    return {
        "finetune_steps": config.steps,
        "finetune_best_step": best[1] if validation else config.steps,
        "finetune_val_mrr_start": metrics.history[0][1].get("val_mrr") if validation else None,
        "finetune_val_mrr_best": best[0] if validation else None,
        "finetune_validation_pairs": len(validation),
        "finetune_pairs": len(pairs),
        "finetune_question_pairs": asked,
        "finetune_name_pairs": len(pairs) - asked,
        "finetune_first_loss": losses[0],
        "finetune_last_loss": float(np.mean(losses[-5:])),
        "finetune_seconds": time.perf_counter() - started,
    }


def _pool_logits(
    model,
    tokenizer,
    corpus: Corpus,
    batch: list[Pair],
    keeps: list[frozenset[int]],
    queries,
    *,
    negatives_of,
    fixed,
    device,
):
    """In-batch and hard negatives: (logits (B, N), targets, the pool's chunk ids, the not-a-negative mask)."""
    pool: list[int] = [p.gold[0] for p in batch]
    for found in negatives_of:
        pool.extend(n for n in found if n not in pool)
    # Another gold chunk of the question, a copy or an overlap of its answer, or a same-name definition is
    # not a negative: it is masked out of the softmax.
    mask = torch.zeros(len(batch), len(pool), dtype=torch.bool)
    for row, keep in enumerate(keeps):
        for col, cid in enumerate(pool):
            if col != row and cid in keep:
                mask[row, col] = True
    if fixed is None:
        d = tokenizer(
            [corpus.by_id[c].text for c in pool],
            padding=True,
            truncation=True,
            max_length=model.config.max_doc_tokens,
            return_tensors="pt",
        ).to(device)
        documents = model.embed_documents(d["input_ids"], d["attention_mask"])  # (N, p)
    else:
        documents = torch.from_numpy(np.stack([fixed[c] for c in pool])).to(device)  # (N, p)
    with torch.autocast(device.split(":")[0], enabled=False):
        logits = (queries.float() @ documents.float().T) * model.scale.float()  # (B, N)
    return logits, torch.arange(len(batch), device=device), pool, mask.to(device)


def _corpus_matrix(index: MipsIndex, corpus: Corpus) -> tuple[list[int], np.ndarray]:
    """(chunk ids, their vectors (N, p)) of every corpus chunk in the index's version."""
    from grounding import store

    with index.engine.connect() as conn:
        vectors = store.version_vectors(conn, index.version.id, [c.id for c in corpus.chunks])
    ids = [c.id for c in corpus.chunks if c.id in vectors]
    return ids, np.stack([vectors[c] for c in ids]).astype(np.float32)


def _state(model: Realm) -> dict:
    """A copy of the retriever's weights (not the reader's), to restore the best validation step."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("reader.")}


def _hard_negatives(
    model: Realm, tokenizer, pairs: list[Pair], keeps: list[frozenset[int]], index: MipsIndex, n: int
) -> dict:
    """For each pair, the first `n` chunks the query tower retrieves that are negatives (`not_negatives`)."""
    model.eval()
    vectors = embed_texts(
        model.query_tower, tokenizer, [p.question for p in pairs], max_tokens=model.config.max_query_tokens
    )
    found = index.retrieve(vectors, keeps, k=n)
    return {i: ids for i, ids in enumerate(found)}


def _index_vectors(index: MipsIndex, pairs: list[Pair], negatives: dict[int, list[int]]) -> dict[int, np.ndarray]:
    from grounding import store

    wanted = {p.gold[0] for p in pairs} | {c for ids in negatives.values() for c in ids}
    with index.engine.connect() as conn:
        return store.version_vectors(conn, index.version.id, sorted(wanted))
