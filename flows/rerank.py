"""The `train-reranker` flow: train a cross-encoder reranker on a repository, gate it on held-out MRR.

Deployed to the `gpu` pool nightly, after the retriever's run (the reranker reorders what the promoted
retriever finds, so it is measured against it). A gpu-pool worker without CUDA trains on the CPU.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.each_repo import each_repository
from grounding.training.reranker import RerankerConfig, RerankerReport, train_reranker


@task
def train_task(repo: str, kwargs: dict) -> RerankerReport:
    return train_reranker(repo, **kwargs)


@flow(name="train-reranker", log_prints=True)
def train_reranker_flow(
    repo: str | None = None,
    harvester: str = "docstrings",
    base: str | None = None,
    steps: int = 300,
    batch_size: int = 8,
    group_size: int = 4,
    lr: float = 3e-5,
    margin: float = 0.0,
    device: str | None = None,
) -> dict:
    """Train on harvested train questions, promote only if held-out MRR beats what is served.

    Without `repo` (the schedule) every ingested repository is trained in turn, except the derived
    eval indexes; one that fails is reported and the others still run.
    """
    config = RerankerConfig(base=base, steps=steps, batch_size=batch_size, group_size=group_size, lr=lr)
    kwargs = {"harvester": harvester, "config": config, "margin": margin, "device": device}
    if repo is not None:
        return _report(repo, train_task(repo, kwargs))
    return each_repository(lambda name: _report(name, train_task(name, kwargs)), what="reranker training")


def _report(repo: str, report: RerankerReport) -> dict:
    get_run_logger().info("reranker run %d: %s", report.run_id, report.decision.reason)
    heldout = report.metrics["heldout"]
    rows = [{"ranking": name, **{k: round(v, 4) for k, v in m.items()}} for name, m in heldout.items()]
    key = "".join(ch if ch.isalnum() else "-" for ch in repo.lower())
    create_table_artifact(rows, key=f"reranker-eval-{key}", description=f"held-out retrieval of {repo}, reranked")
    verdict = "**promoted**" if report.decision.promoted else "**retired**"
    create_markdown_artifact(
        f"# Reranker training run {report.run_id} on `{repo}`\n\n{verdict}: {report.decision.reason}\n\n"
        f"checkpoint `{report.checkpoint}`\n",
        key=f"reranker-{key}",
    )
    return {
        "run_id": report.run_id,
        "promoted": report.decision.promoted,
        "reason": report.decision.reason,
        "checkpoint": report.checkpoint,
        "heldout": heldout,
    }
