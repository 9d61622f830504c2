"""The `refresh-repos` flow: for every registered repository, re-ingest if its commit moved, else say so.

Run from its deployment (the schedule, `prefect deployment run refresh-repos/default`), each moved
repository with a git URL becomes its own `ingest-repo/default` flow run (`run_deployment`): the work
pools' workers share them out, and the ingest-repo deployment's concurrency limit (prefect.yaml) bounds
how many run at once, whoever started them. A repository registered from a local path is ingested in
this run, on this host: another worker's disk may hold nothing, or another tree, at that path. Called
directly (a test, a script), it ingests everything in this process.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.ingest import retry_on_io
from grounding.errors import InvalidArgument
from grounding.index import sources
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
        return {
            "repo": name,
            "action": outcome.action,
            "commit": (outcome.commit_after or "")[:12],
            "reason": outcome.reason,
        }
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"repo": name, "action": "failed", "commit": "", "reason": reason[:300]}


def _ingest_runs(plans: list[RefreshPlan], *, timeout_s: float) -> dict[str, dict]:
    """One ingest-repo flow run per plan, as sub-flow runs of this one; waits up to `timeout_s` for them all.

    A run not finished by then (its worker died, it waits for a pool with no worker) is reported failed
    with its state; so is a run that could not be started or read."""
    if not plans:
        return {}
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from grounding import db, store

    rows: dict[str, dict] = {}
    started = {}
    for plan in plans:
        try:
            started[plan.repo] = run_deployment(
                INGEST_DEPLOYMENT,
                # wait=False: an ingest of it already under way fails this one at once, not holding a slot
                parameters={
                    "source": plan.source,
                    "name": plan.repo,
                    "ref": plan.ref,
                    "wait": False,
                    # what the plan saw: a repository deleted before a worker takes the run is not registered again
                    "repo_id": plan.repo_id,
                    "deletion_mark": plan.deletion_mark,
                },
                timeout=0,  # only create the run: the workers run them side by side
                as_subflow=True,
            )
        except Exception as err:  # noqa: BLE001 - the others still run
            rows[plan.repo] = _row(plan.repo, error=f"could not start {INGEST_DEPLOYMENT}: {type(err).__name__}: {err}")
    by_repo = {plan.repo: plan for plan in plans}
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while True:
            for repo, run in started.items():
                if repo in rows:
                    continue
                try:
                    state = client.read_flow_run(run.id).state
                except Exception as err:  # noqa: BLE001 - the API may answer on the next poll
                    states[repo] = f"unreadable ({type(err).__name__}: {err})"
                    continue
                states[repo] = state.type.value if state is not None else "UNKNOWN"
                if states[repo] not in FINAL:
                    continue
                if states[repo] != "COMPLETED":
                    plan = by_repo[repo]
                    if plan.deleted_since():  # the run refused it: deleted after the plan, so nothing failed
                        rows[repo] = _row(repo, plan.deleted())
                    else:
                        rows[repo] = _row(
                            repo, error=f"flow run {run.name} {states[repo].lower()}: {state.message or ''}"
                        )
                    continue
                with db.get_engine().connect() as conn:
                    commit = store.repo_source(conn, repo)[2]
                rows[repo] = _row(repo, by_repo[repo].ingested(commit, None, by=f" (flow run {run.name})"))
            if all(repo in rows for repo in started) or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
    for repo, run in started.items():
        if repo not in rows:
            rows[repo] = _row(
                repo, error=f"flow run {run.name} still {states.get(repo, 'UNKNOWN')} after {timeout_s:.0f} s"
            )
    return rows


@flow(name="refresh-repos", log_prints=True)
def refresh_repos(repos: list[str] | None = None, fan_out: bool | None = None, timeout_s: float = 14_400) -> list[dict]:
    """Refresh `repos` (default: every registered repository); one failing repository does not stop the rest.

    `fan_out` (default: when this run belongs to a deployment) starts one ingest-repo deployment run per
    moved git repository instead of ingesting here, and waits up to `timeout_s` for them."""
    from prefect.runtime import deployment

    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise InvalidArgument(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
    logger = get_run_logger()
    names = list(dict.fromkeys(repos or list_repositories()))  # a name given twice is refreshed once
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
    elsewhere = [p for p in moved if fan_out and sources.is_git_url(p.source)]
    here = [p for p in moved if p not in elsewhere]
    local = [refresh_one.submit(plan.repo) for plan in here]  # these run beside the fanned-out ones
    rows.update(_ingest_runs(elsewhere, timeout_s=timeout_s))
    for plan, future in zip(here, local):
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
