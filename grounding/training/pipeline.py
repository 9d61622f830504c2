"""Train a retriever on a repository and promote it only if it measures better: the `finetune-retriever` job.

1. Harvest questions (train/held-out split by file) and build the eval index, the repository with
   the harvested docstrings cut out, so no training text gives a held-out answer away.
2. REALM pre-training on the eval index's chunks (optional), with MIPS refreshes into shadow versions.
3. Contrastive fine-tuning on the train split, query tower only or both towers.
4. Checkpoint, then a candidate index version of the eval index: vectors copied when the document
   tower is the active encoder unchanged, re-embedded by the new document tower otherwise.
5. Held-out MRR of the candidate against the active version, same questions, same retrieval mode.
6. The gate: promote (the candidate becomes active on the eval index, and the repository is
   reindexed with the same towers and activated) only if the lower bound of the paired bootstrap 95%
   interval of the held-out MRR gain is above `margin` (0: a gain that is not noise); otherwise the
   candidate is retired with the reason. The held-out questions decide only this: the steps are
   picked on a validation slice of the train split. Everything is recorded in training_runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from grounding import db, store
from grounding.config import get_settings
from grounding.errors import EncoderNotFound, NotIndexed
from grounding.evaluation.eval_index import training_splits
from grounding.evaluation.metrics import evaluate, record_run
from grounding.index.reindex import reindex
from grounding.models.checkpoint import default_device
from grounding.models.realm import RealmConfig, build_realm
from grounding.search.fusion import paired_interval
from grounding.training.checkpoint import encoder_name, load_tokenizer, save_checkpoint
from grounding.training.corpus import load_corpus
from grounding.training.finetune import FinetuneConfig, finetune
from grounding.training.mips import MipsIndex
from grounding.training.pretrain import PretrainConfig, pretrain
from grounding.training.runs import recorded_run, update_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    candidate_mrr: float
    active_mrr: float
    margin: float  # the lower bound of the gain's interval must exceed this (absolute MRR)
    reason: str
    gain: float = 0.0  # candidate - active held-out MRR@k, the same questions
    low: float = 0.0  # its paired bootstrap 95% interval
    high: float = 0.0
    questions: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


GATE_RESAMPLES = 2000


def gate(
    candidate_ranks: Sequence[int | None], active_ranks: Sequence[int | None], *, k: int, margin: float = 0.0
) -> GateDecision:
    """Promote only a candidate whose held-out MRR@k gain over the active one is real: the lower bound of
    its paired bootstrap 95% interval (the same questions resampled) above `margin`.

    A fixed relative margin on a few hundred questions promotes on noise; an interval does not.
    """
    if len(candidate_ranks) != len(active_ranks) or not candidate_ranks:
        raise ValueError(f"the gate needs the same questions for both: {len(candidate_ranks)} and {len(active_ranks)}")

    def rr(ranks):
        return [1 / r if r is not None and r <= k else 0.0 for r in ranks]

    cand, active = rr(candidate_ranks), rr(active_ranks)
    gain, low, high = paired_interval(cand, active, resamples=GATE_RESAMPLES)
    c_mrr, a_mrr = sum(cand) / len(cand), sum(active) / len(active)
    figures = (
        f"held-out MRR@{k} {c_mrr:.4f} vs active {a_mrr:.4f}: gain {gain:+.4f} [{low:+.4f}, {high:+.4f}] "
        f"on {len(cand)} questions"
    )
    promoted = low > margin
    verdict = "lower bound above" if promoted else "lower bound not above"
    reason = f"{figures}; {verdict} {margin:+.4f}"
    return GateDecision(promoted, c_mrr, a_mrr, margin, reason, gain, low, high, len(cand))


@dataclass(frozen=True)
class TrainingReport:
    run_id: int
    repo: str
    checkpoint: str
    candidate_version: int  # on the eval index
    decision: GateDecision
    promoted_version: int | None  # the repository's new active version, when promoted
    metrics: dict


def _warm_start(model, active_eval, metrics: dict) -> bool:
    """Load the towers of the checkpoint `active_eval` serves into `model`; True when its document tower
    was loaded too (the active vectors are then that tower's, and stay valid)."""
    from grounding.training.checkpoint import PREFIX, load_checkpoint, parse_encoder_name

    if not (active_eval.query_encoder or "").startswith(PREFIX):
        return False
    directory, _ = parse_encoder_name(active_eval.query_encoder)
    try:
        served, _, _ = load_checkpoint(directory)
    except EncoderNotFound as exc:  # a checkpoint removed by hand: train from the base encoder tonight
        log.warning("not warm-starting: %s", exc)
        return False
    if served.config.encoder_config != model.config.encoder_config or served.config.proj_dim != model.config.proj_dim:
        log.info("not warm-starting from %s: its towers are not this configuration's", directory)
        return False
    model.query_tower.load_state_dict(served.query_tower.state_dict())
    with torch.no_grad():
        model.log_scale.copy_(served.log_scale)
    metrics["warm_start"] = str(directory)
    same_checkpoint = active_eval.encoder.startswith(PREFIX) and parse_encoder_name(active_eval.encoder) == (
        directory,
        "document",
    )
    if same_checkpoint and not model.config.share_towers:
        model.document_tower.load_state_dict(served.document_tower.state_dict())
        return True
    return False


def train_retriever(
    repo: str,
    *,
    harvester: str = "docstrings",
    realm: RealmConfig | None = None,
    pretrain_config: PretrainConfig | None = None,
    finetune_config: FinetuneConfig | None = None,
    margin: float = 0.0,
    gate_mode: str = "hybrid",
    k: int = 10,
    device: str | None = None,
    warm_start: bool = True,
) -> TrainingReport:
    """Train, build a candidate index version, evaluate it on held-out questions, and promote or retire it.

    With `warm_start`, a fine-tuning run (no pre-training) starts from the towers the eval index serves
    now, when a run promoted them: each night improves on the last instead of restarting from the base
    encoder, and the gate compares the candidate with exactly what it started from."""
    device = device or default_device()
    finetune_config = finetune_config or FinetuneConfig()
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        active_repo = store.active_index_version(conn, repo_id)
    if active_repo is None:
        raise NotIndexed(f"repository {repo!r} has no active index version; ingest it first")
    realm = realm or RealmConfig(encoder=get_settings().encoder)
    config = {
        "realm": realm.to_dict(),
        "pretrain": pretrain_config.to_dict() if pretrain_config else None,
        "finetune": finetune_config.to_dict(),
        "harvester": harvester,
        "margin": margin,
        "gate_mode": gate_mode,
    }
    with recorded_run(repo, kind="realm", config=config, device=device) as run_id:
        t0 = time.perf_counter()
        index, train_q, heldout = training_splits(repo, harvester=harvester)
        with db.get_engine().connect() as conn:
            active_eval = store.active_index_version(conn, store.repo_id(conn, index.name))
        corpus = load_corpus(index.name)
        model, realm = build_realm(realm, with_reader=bool(pretrain_config and pretrain_config.steps), pretrained=True)
        model.to(device)
        tokenizer = load_tokenizer(realm.encoder)
        metrics: dict = {"eval_questions_train": len(train_q), "eval_questions_heldout": len(heldout)}
        warm_document = False
        if warm_start and not (pretrain_config and pretrain_config.steps):
            warm_document = _warm_start(model, active_eval, metrics)
        if pretrain_config and pretrain_config.steps:
            summary = pretrain(model, tokenizer, corpus, pretrain_config, run_id=run_id, device=device)
            update_run(run_id, metrics={"shadow_versions": summary.pop("shadow_versions")})
            metrics.update(summary)
        # The document tower is the active encoder untouched: search the active index as it is.
        document_unchanged = (
            not (pretrain_config and pretrain_config.steps)
            and finetune_config.towers == "query"
            and not realm.share_towers
            and realm.proj_dim in (None, realm.encoder_config.get("hidden_size"))
            and (warm_document or active_eval.encoder == realm.encoder)
        )
        fixed = MipsIndex(
            corpus, tokenizer, max_tokens=realm.max_doc_tokens, label=f"run{run_id}-finetune", asynchronous=False
        )
        try:
            if document_unchanged:
                fixed.adopt(active_eval)
            else:
                fixed.refresh(model.document_tower, step=0)
            metrics.update(
                finetune(model, tokenizer, corpus, train_q, finetune_config, index=fixed, run_id=run_id, device=device)
            )
        finally:
            fixed.close()
        model.eval()
        directory = get_settings().runs_dir / str(run_id)
        save_checkpoint(
            directory,
            model,
            tokenizer,
            step=finetune_config.steps,
            extra={"pretrain": config["pretrain"], "finetune": config["finetune"]},
        )
        update_run(run_id, checkpoint=str(directory))
        query_name = encoder_name(directory, "query")
        doc_name = active_eval.encoder if document_unchanged else encoder_name(directory, "document")
        torch.cuda.empty_cache() if device.startswith("cuda") else None
        candidate = reindex(
            index.name,
            encoder=doc_name,
            query_encoder=query_name,
            activate=False,
            copy_from=active_eval.id if document_unchanged else None,
            grace_seconds=0,
        ).version
        update_run(run_id, candidate_version_id=candidate)
        try:
            scores, ranks = {}, {}
            for mode in dict.fromkeys((gate_mode, "vector")):
                for name, version in (("active", None), ("candidate", candidate)):
                    result = evaluate(index.name, heldout, k=k, mode=mode, index_version=version)
                    record_run(repo, result, dataset=harvester, split="heldout")
                    scores[f"{name}_{mode}"] = result.metrics
                    ranks[f"{name}_{mode}"] = result.ranks
            decision = gate(ranks[f"candidate_{gate_mode}"], ranks[f"active_{gate_mode}"], k=k, margin=margin)
            metrics["heldout"] = scores
            metrics["gate"] = decision.to_dict()
            promoted_version = None
            if decision.promoted:
                with db.get_engine().begin() as conn:
                    store.activate_index_version(conn, store.index_version(conn, candidate))
                promoted_version = reindex(
                    repo,
                    encoder=doc_name,
                    query_encoder=query_name,
                    copy_from=active_repo.id if document_unchanged and active_repo.encoder == doc_name else None,
                ).version
            else:
                with db.get_engine().begin() as conn:
                    store.drop_index_version(conn, candidate, status="retired", note=f"not promoted: {decision.reason}")
        except BaseException:
            with db.get_engine().begin() as conn:
                if store.index_version(conn, candidate).status == "candidate":
                    store.drop_index_version(conn, candidate, status="failed", note="the run ended before the gate")
            raise
        metrics["seconds"] = time.perf_counter() - t0
        update_run(
            run_id, decision="promoted" if decision.promoted else "retired", reason=decision.reason, metrics=metrics
        )
        log.info("training run %d on %s: %s", run_id, repo, decision.reason)
        return TrainingReport(run_id, repo, str(directory), candidate, decision, promoted_version, metrics)
