"""The `ingest-repo` flow: ingest a path or git URL into Postgres/pgvector, and publish what it did."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import re
import time
from collections.abc import Iterator, Sequence

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from grounding.config import get_settings
from grounding.errors import DatabaseUnavailable, IngestError, InvalidArgument, SourceUnreachable
from grounding.index.ingest import Progress, ingest
from grounding.index.shards import Shard, ShardRunner, run_shard
from grounding.records import IngestReport

IO_ERRORS = (DatabaseUnavailable, SourceUnreachable, ConnectionError, TimeoutError)
SHARD_DEPLOYMENTS = {"cpu": "ingest-shard/cpu", "gpu": "ingest-shard/gpu"}
SHARD_ATTEMPTS = 3  # a shard whose flow run crashed (its process or machine died) is started again, twice
SHARD_TIMEOUT_S = 4 * 3600
SHARD_START_S = 900  # no shard run started by then: no worker of the pool has a free slot
FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
POLL_SECONDS = 1.0

# A listener for the progress of flows run in this process (the copilot's ingest page). A context
# variable, not a flow parameter: a callable cannot travel to the Prefect API or into a cache key.
_progress_listener: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("ingest_progress", default=None)


@contextlib.contextmanager
def reporting_progress(listener: Progress) -> Iterator[None]:
    """Call `listener(stage, done, total)` as `ingest_repo` flows run in this context make progress."""
    token = _progress_listener.set(listener)
    try:
        yield
    finally:
        _progress_listener.reset(token)


def progress_listener() -> Progress | None:
    """The listener `reporting_progress` set, if any. A function, not the context variable itself, in the task's
    code: a task shipped to a Dask worker is pickled with the globals its code names, and a ContextVar cannot be."""
    return _progress_listener.get()


def retry_on_io(task, task_run, state) -> bool:
    """Retry when the database or a git remote failed to answer; a bad path or a bug fails at once."""
    try:
        state.result()
    except IO_ERRORS:
        return True
    except Exception:
        return False
    return False


# NO_CACHE: an ingest is never skipped for having run before.
@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)
def ingest_task(
    source: str,
    name: str | None,
    ref: str | None,
    user: str | None = None,
    replace_source: bool = False,
    wait: bool = True,
    shards: int = 1,
    shard_pool: str | None = None,
    repo_id: int | None = None,
    deletion_mark: int | None = None,
) -> IngestReport:
    logger = get_run_logger()
    listener = progress_listener()

    def progress(stage: str, done: int, total: int) -> None:
        logger.info("%s: %d/%d", stage, done, total)
        if listener is not None:
            listener(stage, done, total)

    return ingest(
        source,
        name=name,
        ref=ref,
        progress=progress,
        user=user,
        replace_source=replace_source,
        wait=wait,
        shards=shards,
        run_shards=_shard_runner(shard_pool) if shards != 1 else None,
        repo_id=repo_id,
        deletion_mark=deletion_mark,
    )


def _shard_runner(pool: str | None) -> ShardRunner:
    """Where shards run: the Dask or Ray cluster GROUNDING_SHARD_CLUSTER names; else, in a deployment's run,
    ingest-shard flow runs on `pool` (default: choose_shard_pool); else tasks on this process's threads."""
    from prefect.runtime import deployment

    cluster = get_settings().shard_cluster
    if cluster or deployment.id is None:
        return shard_tasks(cluster)
    return shard_runs(pool or choose_shard_pool())


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)
def ingest_shard_task(repo: str, snapshot: int, index: int) -> dict:
    return run_shard(repo, snapshot, index).summary()


@flow(name="ingest-shard", log_prints=True)
def ingest_shard(repo: str, snapshot: int, index: int) -> dict:
    """Write shard `index` of running `snapshot` of `repo` (grounding.index.shards): started by `ingest-repo` with
    `shards` > 1, on whichever worker of the pool takes it. Its files are the ones the ingest planned, read
    from the repository's registered source."""
    return ingest_shard_task(repo, snapshot, index)


@flow(name="ingest-shards", log_prints=True)
def ingest_shards(shards: list[dict]) -> None:
    """The shards of one ingest (Shard.parameters()) as tasks on this flow's task runner: threads here, or a
    Dask or Ray cluster's workers (GROUNDING_SHARD_CLUSTER, see `shard_task_runner`). Every shard is waited
    for; then the first failure is raised."""
    futures = [ingest_shard_task.submit(**shard) for shard in shards]
    errors = []
    for future in futures:
        try:
            future.result()
        except Exception as err:  # noqa: BLE001 - every shard is waited for before one failure is raised
            errors.append(err)
    if errors:
        raise errors[0]


_DASK_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?")


def shard_task_runner(cluster: str | None):
    """The task runner of `ingest-shards`: Prefect's threads, or the cluster GROUNDING_SHARD_CLUSTER names
    (tls://, or tcp:// on this host: a Dask scheduler, with prefect-dask; ray://: a Ray cluster, with prefect-ray,
    on this host unless RAY_USE_TLS=1)."""
    if not cluster:
        return None
    scheme, _, rest = cluster.partition("://") if "://" in cluster else ("", "", cluster)
    scheme = scheme.lower()
    if scheme not in ("tcp", "tls", "ray"):
        raise InvalidArgument(
            f"GROUNDING_SHARD_CLUSTER must be a Dask scheduler (tcp://host:8786, tls://...) or a Ray cluster "
            f"(ray://host:10001), not {cluster!r}"
        )
    address = _DASK_ADDRESS.fullmatch(rest)
    if address is None:
        raise InvalidArgument(f"GROUNDING_SHARD_CLUSTER {cluster!r} is not scheme://host[:port]")
    host = address["host"].strip("[]")
    encrypted = scheme == "tls" or (scheme == "ray" and os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true"))
    if not encrypted and host not in ("127.0.0.1", "localhost", "::1"):
        # A Dask scheduler or a Ray client server runs the code anyone who reaches it sends, on workers that hold
        # the database's credentials and every checkout: off this host, only over TLS with certificates.
        raise InvalidArgument(
            f"GROUNDING_SHARD_CLUSTER {cluster!r} is plaintext to another host; use tls://{host}:PORT with "
            "Dask's certificates (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...__CLIENT__CERT, ...__CLIENT__KEY), "
            "or Ray with RAY_USE_TLS=1 and its certificates"
        )
    if scheme == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as err:
            raise InvalidArgument(
                "GROUNDING_SHARD_CLUSTER names a Ray cluster but prefect-ray is not installed: pip install prefect-ray"
            ) from err
        return RayTaskRunner(address=cluster)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=cluster)


def shard_tasks(cluster: str | None) -> ShardRunner:
    """A ShardRunner: the shards as tasks of an `ingest-shards` sub-flow run on `cluster` (shard_task_runner)."""
    task_runner = shard_task_runner(cluster)
    run_flow = ingest_shards.with_options(task_runner=task_runner) if task_runner is not None else ingest_shards

    def run(shards: Sequence[Shard]) -> None:
        run_flow([s.parameters() for s in shards])

    return run


def choose_shard_pool() -> str:
    """The pool the shards of an ingest go to: `gpu` when a worker of it is online, else `cpu`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            workers = client.read_workers_for_work_pool("gpu")
        except Exception:  # noqa: BLE001 - no gpu pool, or an API that cannot say: the cpu pool takes them
            return "cpu"
    return "gpu" if any(getattr(w.status, "value", w.status) == "ONLINE" for w in workers) else "cpu"


def shard_runs(pool: str, *, timeout_s: float = SHARD_TIMEOUT_S, start_timeout_s: float = SHARD_START_S) -> ShardRunner:
    """A ShardRunner that starts one `ingest-shard` flow run per shard on `pool`'s deployment, as sub-flow runs,
    and waits for them all. A run that crashed (its process or machine died) is started again, up to
    SHARD_ATTEMPTS runs a shard; one that failed or was cancelled fails the ingest at once (a file that
    changed fails the same way again). Gives up, cancelling the runs still out, when no shard has started
    within `start_timeout_s` (the pool has no free worker: the ingest itself may hold the last slot) or
    all are not done within `timeout_s`."""
    if pool not in SHARD_DEPLOYMENTS:
        raise InvalidArgument(f"shard_pool must be one of {sorted(SHARD_DEPLOYMENTS)}, not {pool!r}")

    def run(shards: Sequence[Shard]) -> None:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment
        from prefect.states import Cancelled

        logger = get_run_logger()
        deployment = SHARD_DEPLOYMENTS[pool]

        def start(shard: Shard):
            return run_deployment(deployment, parameters=shard.parameters(), timeout=0, as_subflow=True)

        runs = {s.index: start(s) for s in shards}
        attempts = dict.fromkeys(runs, 1)
        by_index = {s.index: s for s in shards}
        done: set[int] = set()
        began = time.monotonic()
        started = False
        with get_client(sync_client=True) as client:

            def give_up(why: str) -> IngestError:
                for index, flow_run in runs.items():
                    if index not in done:
                        try:
                            client.set_flow_run_state(flow_run.id, Cancelled(message="the ingest gave up"), force=True)
                        except Exception:  # noqa: BLE001 - a run not cancelled stops at its next batch
                            logger.warning("could not cancel shard run %s", flow_run.name)
                return IngestError(why)

            while len(done) < len(runs):
                waited = time.monotonic() - began
                if not started and waited >= start_timeout_s:
                    raise give_up(
                        f"no worker of the {pool!r} pool took a shard of this ingest within {start_timeout_s:.0f} s; "
                        "add workers (or raise their --limit) beyond the ingests that run at once, then rerun"
                    )
                if waited >= timeout_s:
                    raise give_up(
                        f"{len(runs) - len(done)} of {len(runs)} shards did not finish within {timeout_s:.0f} s; "
                        "rerun the ingest: what the shards wrote is reused"
                    )
                for index, flow_run in list(runs.items()):
                    if index in done:
                        continue
                    state = client.read_flow_run(flow_run.id).state
                    kind = state.type.value if state is not None else "UNKNOWN"
                    started = started or kind not in ("SCHEDULED", "PENDING", "UNKNOWN")
                    if kind not in FINAL:
                        continue
                    if kind == "COMPLETED":
                        done.add(index)
                        continue
                    why = f"flow run {flow_run.name} {kind.lower()}: {state.message or ''}"
                    if kind != "CRASHED" or attempts[index] >= SHARD_ATTEMPTS:
                        raise give_up(
                            f"shard {index} ended after {attempts[index]} run(s) ({why}); rerun the ingest: what "
                            "the shards wrote is reused"
                        )
                    logger.warning("shard %d: %s; starting it again", index, why)
                    runs[index] = start(by_index[index])
                    attempts[index] += 1
                time.sleep(POLL_SECONDS)

    return run


@task
def publish_report(report: IngestReport) -> None:
    """A Prefect artifact: files seen and skipped (with reasons), chunks added/removed/unchanged, time per stage."""
    reasons = report.skipped_by_reason()
    lines = [
        f"# Ingest of `{report.repo}`, snapshot {report.snapshot_id}"
        + (f" at `{report.commit[:12]}`" if report.commit else ""),
        "",
        "| files | count |",
        "|---|---|",
        f"| seen | {report.files_seen} |",
        f"| changed | {report.files_changed} |",
        f"| unchanged | {report.files_unchanged} |",
        f"| deleted | {report.files_deleted} |",
        f"| skipped | {len(report.skipped)} |",
        "",
        "| chunks | count |",
        "|---|---|",
        f"| added | {report.chunks_added} |",
        f"| removed | {report.chunks_removed} |",
        f"| unchanged | {report.chunks_unchanged} |",
        f"| embedded | {report.embeddings_computed} |",
        f"| vectors reused | {report.embeddings_reused} |",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {stage} | {secs:.2f} |" for stage, secs in report.seconds.items()),
    ]
    if reasons:
        lines += [
            "",
            "| skipped because | files |",
            "|---|---|",
            *(f"| {r} | {n} |" for r, n in sorted(reasons.items())),
        ]
        lines += ["", "First skipped files:", *(f"- `{s.path}`: {s.reason}" for s in report.skipped[:50])]
    if report.non_utf8:
        lines += ["", "Not UTF-8 (decoded with replacement): " + ", ".join(f"`{p}`" for p in report.non_utf8[:50])]
    key = "ingest-" + "".join(ch if ch.isalnum() else "-" for ch in report.repo.lower())
    create_markdown_artifact("\n".join(lines), key=key, description=f"ingest of {report.repo}")


@task
def tune_fusion_task(repo: str, *, only_if_untuned: bool) -> dict | None:
    """Choose the active index version's fusion weights on the repository's own questions (grounding.evaluation.tuning).

    Skipped when the version already has them (`only_if_untuned`); a repository with no question to
    harvest keeps the defaults. Tuning never fails the ingest or reindex it follows."""
    from grounding import db, store
    from grounding.errors import DatasetError
    from grounding.evaluation.tuning import keep_defaults, tune_fusion

    logger = get_run_logger()
    try:
        if only_if_untuned:
            with db.get_engine().connect() as conn:
                version = store.active_index_version(conn, store.repo_id(conn, repo))
            if version is None or version.fusion_weights is not None:
                return None
        choice = tune_fusion(repo)
    except DatasetError as err:
        logger.info("fusion weights of %s stay the defaults: %s", repo, err)
        keep_defaults(repo, str(err)[:300])
        return None
    except Exception as err:  # noqa: BLE001 - tuning never fails the ingest or reindex it follows
        logger.warning("could not tune the fusion weights of %s: %s: %s", repo, type(err).__name__, err)
        return None
    logger.info("%s", choice.describe())
    return {"weights": str(choice.weights), "questions": choice.questions, "stored": choice.stored}


@flow(name="ingest-repo", log_prints=True)
def ingest_repo(
    source: str,
    name: str | None = None,
    ref: str | None = None,
    user: str | None = None,
    replace_source: bool = False,
    tune_fusion: bool = True,
    wait: bool = True,
    shards: int = 1,
    shard_pool: str | None = None,
    repo_id: int | None = None,
    deletion_mark: int | None = None,
) -> dict:
    """Ingest `source` (a directory or git URL) as repository `name` (default: its last path segment).

    With `user` (the copilot passes its user), the repository must be granted to them and is only
    re-ingested from its registered source (grounding.index.ingest.ingest); `replace_source` re-points an
    existing repository at `source`, for a trusted caller only. With `tune_fusion`, an index version
    that has no fusion weights of its own yet gets them, chosen on the repository's harvested questions.
    Without `wait`, a run that finds another ingest of the repository under way fails at once (IngestBusy)
    instead of queueing behind it (refresh-repos asks that: the next refresh picks the repository up).
    With `shards` > 1 the changed files are written by that many shards: tasks of an `ingest-shards` sub-flow
    run on the Dask or Ray cluster GROUNDING_SHARD_CLUSTER names; else, run from a deployment, `ingest-shard`
    flow runs on `shard_pool` (default: `gpu` when a worker of it is online, else `cpu`), which the pool's
    workers share out; else tasks of an `ingest-shards` sub-flow run, on threads. `repo_id` and `deletion_mark`
    (a job of the API or the copilot, a refresh's fan-out) are what the run saw when it was queued: a
    repository deleted since is not registered again.
    """
    if shard_pool not in (None, *SHARD_DEPLOYMENTS):
        raise InvalidArgument(f"shard_pool must be one of {sorted(SHARD_DEPLOYMENTS)}, not {shard_pool!r}")
    shard_task_runner(get_settings().shard_cluster)  # a cluster that cannot be named fails before any work
    report = ingest_task(source, name, ref, user, replace_source, wait, shards, shard_pool, repo_id, deletion_mark)
    publish_report(report)
    summary = dataclasses.asdict(report)
    summary["skipped"] = report.skipped_by_reason()
    if tune_fusion:
        summary["fusion"] = tune_fusion_task(report.repo, only_if_untuned=True)
    return summary
