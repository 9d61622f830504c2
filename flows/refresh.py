"""The `refresh-repos` flow: for every registered repository, re-ingest if its commit moved, else say so."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.ingest import retry_on_io
from grounding.index.refresh import RefreshOutcome, refresh, repositories


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)
def list_repositories() -> list[str]:
    return repositories()


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)
def refresh_one(repo: str) -> RefreshOutcome:
    return refresh(repo)


@flow(name="refresh-repos", log_prints=True)
def refresh_repos(repos: list[str] | None = None) -> list[dict]:
    """Refresh `repos` (default: every registered repository); one failing repository does not stop the rest."""
    logger = get_run_logger()
    names = repos or list_repositories()
    futures = [refresh_one.submit(name) for name in names]
    rows = []
    for name, future in zip(names, futures):
        try:
            outcome = future.result()
            row = {
                "repo": name,
                "action": outcome.action,
                "commit": (outcome.commit_after or "")[:12],
                "reason": outcome.reason,
            }
        except Exception as err:  # each repository's failure is reported, the others go on
            row = {"repo": name, "action": "failed", "commit": "", "reason": f"{type(err).__name__}: {err}"[:300]}
        logger.info("%(repo)s: %(action)s (%(reason)s)", row)
        rows.append(row)
    if rows:
        create_table_artifact(rows, key="refresh-repos", description="what refresh-repos did per repository")
    if any(r["action"] == "failed" for r in rows):
        raise RuntimeError(
            f"{sum(r['action'] == 'failed' for r in rows)} of {len(rows)} repositories failed to refresh"
        )
    return rows
