"""The `refresh-repos` flow: for every registered repository, re-ingest if its commit moved, else say so.

Run from its deployment (the schedule, `prefect deployment run refresh-repos/default`), each moved
repository becomes its own `ingest-repo/default` flow run (`run_deployment`): the work pools' workers
share them out, and the ingest-repo deployment's concurrency limit (prefect.yaml) bounds how many run at
once, whoever started them. Called directly (a test, a script), it ingests in this process instead.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.ingest import retry_on_io
from grounding.index.refresh import RefreshOutcome, RefreshPlan, plan_refresh, refresh, repositories

INGEST_DEPLOYMENT = "ingest-repo/default"
FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
POLL_SECONDS = 2.0


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)
def list_repositories() -> list[str]:
    return repositories()


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)
def plan_one(repo: str) -> RefreshPlan:
    return plan_refresh(repo)


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)
def refresh_one(repo: str) -> RefreshOutcome:
    return refresh(repo)


def _row(name: str, outcome: RefreshOutcome | None = None, error: BaseException | str | None = None) -> dict:
    if outcome is not None:
        return {"repo": name, "action": outcome.action, "commit": (outcome.commit_after or "")[:12], "reason": outcome.reason}
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"repo": name, "action": "failed", "commit": "", "reason": reason[:300]}


def _ingest_runs(plans: list[RefreshPlan]) -> dict[str, dict]:
    """One ingest-repo flow run per plan, as sub-flow runs of this one; waits for all, returns a row each."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from grounding import db, store

    started = {
        plan.repo: run_deployment(
            INGEST_DEPLOYMENT,
            parameters={"source": plan.source, "name": plan.repo, "ref": plan.ref},
            timeout=0,  # only create the run: the workers run them side by side
            as_subflow=True,
        )
        for plan in plans
    }
    by_repo = {plan.repo: plan for plan in plans}
    rows: dict[str, dict] = {}
    with get_client(sync_client=True) as client:
        while len(rows) < len(started):
            for repo, run in started.items():
                if repo in rows:
                    continue
                state = client.read_flow_run(run.id).state
                if state is None or state.type.value not in FINAL:
                    continue
                if state.type.value != "COMPLETED":
                    rows[repo] = _row(repo, error=f"flow run {run.name} {state.type.value.lower()}: {state.message or ''}")
                    continue
                with db.get_engine().connect() as conn:
                    commit = store.repo_source(conn, repo)[2]
                rows[repo] = _row(repo, by_repo[repo].ingested(commit, None, by=f" (flow run {run.name})"))
            if len(rows) < len(started):
                time.sleep(POLL_SECONDS)
    return rows


@flow(name="refresh-repos", log_prints=True)
def refresh_repos(repos: list[str] | None = None, fan_out: bool | None = None) -> list[dict]:
    """Refresh `repos` (default: every registered repository); one failing repository does not stop the rest.

    `fan_out` (default: when this run belongs to a deployment) starts one ingest-repo deployment run per
    moved repository instead of ingesting here."""
    from prefect.runtime import deployment

    logger = get_run_logger()
    names = repos or list_repositories()
    fan_out = deployment.id is not None if fan_out is None else fan_out
    rows: dict[str, dict] = {}
    moved: list[RefreshPlan] = []
    for name, future in zip(names, [plan_one.submit(name) for name in names]):
        try:
            plan = future.result()
        except Exception as err:  # each repository's failure is reported, the others go on
            rows[name] = _row(name, error=err)
            continue
        if not plan.moved:
            rows[name] = _row(name, plan.unchanged())
        else:
            moved.append(plan)
    if fan_out:
        rows.update(_ingest_runs(moved))
    else:
        for plan, future in zip(moved, [refresh_one.submit(plan.repo) for plan in moved]):
            try:
                rows[plan.repo] = _row(plan.repo, future.result())
            except Exception as err:
                rows[plan.repo] = _row(plan.repo, error=err)
    ordered = [rows[name] for name in names]
    for row in ordered:
        logger.info("%(repo)s: %(action)s (%(reason)s)", row)
    if ordered:
        create_table_artifact(ordered, key="refresh-repos", description="what refresh-repos did per repository")
    failed = sum(r["action"] == "failed" for r in ordered)
    if failed:
        raise RuntimeError(f"{failed} of {len(ordered)} repositories failed to refresh")
    return ordered
