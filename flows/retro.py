"""The `train-retro` flow: train RETRO on a repository, report held-out bits per byte with and without retrieval.

Deployed to the `gpu` pool weekly. On CUDA it trains under bf16 autocast with torch.compile; a
gpu-pool worker without CUDA trains the tiny configuration on the CPU.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.each_repo import each_repository
from grounding.index.retro_db import RetroDbConfig
from grounding.training.retro_train import RetroReport, RetroTrainConfig, train_retro


@task
def train_retro_task(repo: str, kwargs: dict) -> RetroReport:
    return train_retro(repo, **kwargs)


@flow(name="train-retro", log_prints=True)
def train_retro_flow(
    repo: str | None = None,
    steps: int = 2000,
    batch_size: int = 8,
    chunks_per_sequence: int = 16,
    chunk_tokens: int = 64,
    neighbours: int = 2,
    retriever: str = "dense",
    baseline: bool = True,
    device: str | None = None,
) -> dict:
    """Train RETRO (and the baseline) on `repo`, or on every ingested repository when none is given."""
    kwargs = {
        "train_config": RetroTrainConfig(
            steps=steps, batch_size=batch_size, chunks_per_sequence=chunks_per_sequence, baseline=baseline
        ),
        "db_config": RetroDbConfig(chunk_tokens=chunk_tokens, neighbours=neighbours, retriever=retriever),
        "device": device,
    }

    def one(name: str) -> dict:
        report = train_retro_task(name, kwargs)
        rows = [{"evaluation": k, "bits_per_byte": round(v, 4)} for k, v in report.bits_per_byte.items()]
        key = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
        create_table_artifact(rows, key=f"retro-bpb-{key}", description=f"held-out bits per byte of {name}")
        get_run_logger().info("%s: %s", name, report.bits_per_byte)
        return {"run_id": report.run_id, "checkpoint": report.checkpoint, "bits_per_byte": report.bits_per_byte}

    return one(repo) if repo else each_repository(one, what="RETRO training")
