"""Ingests the copilot and the HTTP API start, through the `ingest-repo` Prefect flow, and what they poll of them.

With a reachable Prefect API (PREFECT_API_URL, as under `grounding serve`) that has the deployment, the
flow runs on a worker (`run_deployment`) and a thread here polls its state and the repository's newest
snapshot. Otherwise the flow runs in a thread of this Streamlit server and reports each batch of files
through `flows.ingest.reporting_progress`. Jobs live in this module, so every session sees them.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

from grounding.service.serve import PROJECT_DIR
from grounding.service.status import SnapshotView, latest_snapshot

log = logging.getLogger(__name__)

__all__ = [
    "DEPLOYMENT",
    "POLL_SECONDS",
    "IngestJob",
    "deployment_available",
    "job",
    "prefect_api",
    "running_jobs",
    "start",
]

DEPLOYMENT = "ingest-repo/default"
POLL_SECONDS = 1.0
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

if str(PROJECT_DIR) not in sys.path:  # flows/ sits beside the grounding package, not inside it
    sys.path.append(str(PROJECT_DIR))


@dataclass
class IngestJob:
    """One ingest, updated by its thread and read by the page (each field is replaced whole)."""

    source: str
    name: str
    ref: str | None
    mode: str  # deployment or direct
    user: str | None = None  # who asked: the flow checks their access itself
    replace_source: bool = False
    repo_id: int | None = None  # the repository's id when queued, and the deletes' mark then: a repository
    deletion_mark: int | None = None  # deleted before the run starts is not registered again (ingest says how)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.time)
    status: str = "starting"  # starting, running, complete, failed
    stage: str = "starting the flow"
    done: int = 0
    total: int = 0
    flow_run_id: str | None = None
    flow_state: str | None = None
    snapshot: SnapshotView | None = None  # the newest snapshot when last polled, the finished one at the end
    summary: dict | None = None  # the flow's return value (direct mode)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("complete", "failed")

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


_jobs: dict[str, IngestJob] = {}
_lock = threading.Lock()


def job(key: str) -> IngestJob | None:
    return _jobs.get(key)


def running_jobs() -> list[IngestJob]:
    return [j for j in _jobs.values() if not j.finished]


def prefect_api() -> str | None:
    """PREFECT_API_URL when it is set and its server answers; None otherwise."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=2) as response:
            return url if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def deployment_available() -> bool:
    """Whether the reachable Prefect API has the `ingest-repo/default` deployment."""
    if prefect_api() is None:
        return False
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(DEPLOYMENT)
    except ObjectNotFound:
        return False
    except (PrefectHTTPStatusError, httpx.HTTPError, OSError) as err:  # healthy, yet it would not say: run here
        log.warning("could not read deployment %s from %s: %s", DEPLOYMENT, os.environ.get("PREFECT_API_URL"), err)
        return False
    return True


def start(
    source: str,
    *,
    name: str,
    ref: str | None,
    use_deployment: bool,
    user: str | None = None,
    replace_source: bool = False,
    repo_id: int | None = None,
) -> IngestJob:
    """Start ingesting `source` as `name` (as `user`, checked by the flow); ValueError while another
    ingest of `name` started here runs. A worker may take the run minutes later: the repository must then
    still be the one registered now (`repo_id`, given by a caller that read its source from that row), and
    not deleted since; else the run registers nothing."""
    from grounding import db, store

    with db.get_engine().connect() as conn:
        mark = store.deletion_mark(conn)  # first: a delete that commits after this read is past the mark
        if repo_id is None:
            record = store.repo_record(conn, name)
            repo_id = record.id if record is not None else None  # None: new; the run registers it
    with _lock:
        if any(j.name == name for j in running_jobs()):
            raise ValueError(f"an ingest of {name!r} is already running; wait for it to finish")
        mode = "deployment" if use_deployment else "direct"
        new = IngestJob(
            source, name, ref, mode, user=user, replace_source=replace_source, repo_id=repo_id, deletion_mark=mark
        )
        _jobs[new.key] = new
    target = _run_deployment if use_deployment else _run_direct
    # The thread gets a copy of this context: Prefect's settings (a test harness's server) and our listener.
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(target, new), name=f"ingest-{name}", daemon=True).start()
    return new


def _fail(job: IngestJob, err: BaseException) -> None:
    job.error = str(err) or type(err).__name__
    job.status = "failed"


def _run_direct(job: IngestJob) -> None:
    from flows.ingest import ingest_repo, reporting_progress

    def listener(stage: str, done: int, total: int) -> None:
        job.stage, job.total, job.done = stage, total, done
        job.status = "running"

    try:
        with reporting_progress(listener):
            state = ingest_repo(
                job.source,
                name=job.name,
                ref=job.ref,
                user=job.user,
                replace_source=job.replace_source,
                repo_id=job.repo_id,
                deletion_mark=job.deletion_mark,
                return_state=True,
            )
        job.flow_state = state.type.value
        if state.is_completed():
            job.summary = state.result()
            job.snapshot = latest_snapshot(job.name)
            job.status = "complete"
        else:
            try:
                state.result()
            except Exception as err:  # the flow's own error, as Prefect recorded it
                _fail(job, err)
            else:
                _fail(job, RuntimeError(f"the flow ended {state.type.value}"))
    except Exception as err:
        log.exception("ingest of %s failed", job.name)
        _fail(job, err)


def _run_deployment(job: IngestJob) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    try:
        flow_run = run_deployment(
            DEPLOYMENT,
            parameters={
                "source": job.source,
                "name": job.name,
                "ref": job.ref,
                "user": job.user,
                "replace_source": job.replace_source,
                "repo_id": job.repo_id,
                "deletion_mark": job.deletion_mark,
            },
            timeout=0,
        )
        job.flow_run_id = str(flow_run.id)
        before = latest_snapshot(job.name)
        with get_client(sync_client=True) as client:
            while True:
                state = client.read_flow_run(flow_run.id).state
                job.flow_state = state.type.value if state else None
                job.stage = "listing and reading files" if job.flow_state == "RUNNING" else "waiting for a worker"
                newest = latest_snapshot(job.name)
                if newest is not None and (before is None or newest.id != before.id):
                    job.snapshot = newest
                    job.status = "running"
                    job.stage = "writing files" if newest.status == "running" else f"snapshot {newest.status}"
                    job.done = newest.files_written
                if job.flow_state in FINAL_STATES:
                    break
                time.sleep(POLL_SECONDS)
        if job.flow_state == "COMPLETED":
            job.snapshot = latest_snapshot(job.name)
            job.status = "complete"
        else:
            detail = job.snapshot.error if job.snapshot is not None and job.snapshot.error else state.message
            _fail(job, RuntimeError(f"flow run {job.flow_run_id} ended {job.flow_state}: {detail}"))
    except Exception as err:
        log.exception("ingest of %s through %s failed", job.name, DEPLOYMENT)
        _fail(job, err)
