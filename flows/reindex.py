"""The `reindex` flow: re-embed one repository into a new index version, verify it, swap it in."""

from __future__ import annotations

import dataclasses

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.ingest import retry_on_io, tune_fusion_task
from grounding.index.reindex import ReindexReport, reindex


@task(retries=1, retry_delay_seconds=[30], retry_condition_fn=retry_on_io)
def reindex_task(repo: str, encoder: str | None, grace_seconds: float) -> ReindexReport:
    return reindex(repo, encoder=encoder, grace_seconds=grace_seconds)


@flow(name="reindex", log_prints=True)
def reindex_repo(repo: str, encoder: str | None = None, grace_seconds: float = 600.0, tune_fusion: bool = True) -> dict:
    """Build `repo`'s index with `encoder` (a local model path; default: the configured encoder) and activate it;
    with `tune_fusion`, the new version's fusion weights are chosen on the repository's own questions."""
    report = reindex_task(repo, encoder, grace_seconds)
    fusion = tune_fusion_task(report.repo, only_if_untuned=True) if tune_fusion else None
    stages = "\n".join(f"| {k} | {v:.2f} |" for k, v in report.seconds.items())
    create_markdown_artifact(
        f"# Reindex of `{report.repo}`\n\nversion {report.previous_version} -> **{report.version}** "
        f"(`{report.encoder}`), {report.chunks} chunks, {report.embedded} encoded, "
        f"collected versions: {list(report.collected) or 'none'}\n\n| stage | seconds |\n|---|---|\n{stages}\n",
        key="reindex-" + "".join(ch if ch.isalnum() else "-" for ch in report.repo.lower()),
    )
    return {**dataclasses.asdict(report), "fusion": fusion}
