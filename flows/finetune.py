"""The `finetune-retriever` flow: train a REALM retriever on a repository, gate it on held-out MRR, promote or retire.

Deployed to the `gpu` pool on a nightly schedule. A gpu-pool worker on a machine without CUDA trains
on the CPU (the same code, without bf16 autocast), so the schedule runs wherever a worker polls it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.each_repo import each_repository
from grounding.models.realm import RealmConfig
from grounding.training.finetune import FinetuneConfig
from grounding.training.pipeline import TrainingReport, train_retriever
from grounding.training.pretrain import PretrainConfig

# On a GPU a thousand REALM steps take minutes; on a CPU worker, at ~139 s a step, they would take 38 hours per
# repository, so a CPU worker fine-tunes the query tower only (minutes) unless pre-training is asked for.
GPU_PRETRAIN_STEPS = 1000


@task
def train_task(repo: str, kwargs: dict) -> TrainingReport:
    return train_retriever(repo, **kwargs)


@flow(name="finetune-retriever", log_prints=True)
def finetune_retriever(
    repo: str | None = None,
    harvester: str = "docstrings",
    encoder: str | None = None,
    pretrain_steps: int | None = None,
    refresh_every: int = 500,
    masking: str = "salient",
    ict_steps: int = 0,
    finetune_steps: int = 300,
    towers: str = "query",
    batch_size: int = 16,
    margin: float = 0.0,
    gate_mode: str = "hybrid",
    device: str | None = None,
) -> dict:
    """Pre-train (REALM, with MIPS refreshes), fine-tune on harvested train questions, gate on held-out MRR.

    `pretrain_steps` None: GPU_PRETRAIN_STEPS on CUDA, none on a CPU (fine-tuning alone fits a night there).
    Without `repo` (the nightly schedule) every ingested repository is trained in turn, except the
    derived eval indexes; one that fails is reported and the others still run.
    """
    from grounding.config import get_settings
    from grounding.models.checkpoint import default_device

    device = device or default_device()
    if pretrain_steps is None:  # REALM pre-training is the GPU job: ~139 s a step on a 2-core CPU worker
        pretrain_steps = GPU_PRETRAIN_STEPS if device.startswith("cuda") else 0
    realm = RealmConfig(encoder=encoder or get_settings().encoder)
    pretrain = (
        PretrainConfig(steps=pretrain_steps, refresh_every=refresh_every, masking=masking, ict_steps=ict_steps)
        if pretrain_steps
        else None
    )
    finetune = FinetuneConfig(steps=finetune_steps, towers=towers, batch_size=batch_size)
    kwargs = {
        "harvester": harvester,
        "realm": realm,
        "pretrain_config": pretrain,
        "finetune_config": finetune,
        "margin": margin,
        "gate_mode": gate_mode,
        "device": device,
    }
    if repo is not None:
        return _report(repo, train_task(repo, kwargs))
    return each_repository(lambda name: _report(name, train_task(name, kwargs)), what="retriever training")


def _report(repo: str, report: TrainingReport) -> dict:
    get_run_logger().info("run %d: %s", report.run_id, report.decision.reason)
    heldout = report.metrics.get("heldout", {})
    rows = [{"version": name, **{k: round(v, 4) for k, v in m.items()}} for name, m in heldout.items()]
    key = "".join(ch if ch.isalnum() else "-" for ch in repo.lower())
    create_table_artifact(rows, key=f"retriever-eval-{key}", description=f"held-out retrieval of {repo}")
    verdict = "**promoted**" if report.decision.promoted else "**retired**"
    create_markdown_artifact(
        f"# Retriever training run {report.run_id} on `{repo}`\n\n{verdict}: {report.decision.reason}\n\n"
        f"checkpoint `{report.checkpoint}`, candidate version {report.candidate_version}, "
        f"active version now {report.promoted_version or 'unchanged'}\n",
        key=f"retriever-{key}",
    )
    return {
        "run_id": report.run_id,
        "promoted": report.decision.promoted,
        "reason": report.decision.reason,
        "candidate_version": report.candidate_version,
        "promoted_version": report.promoted_version,
        "checkpoint": report.checkpoint,
        "heldout": heldout,
    }
