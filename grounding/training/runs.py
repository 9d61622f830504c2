"""Training runs in Postgres: one row per run, per-step metrics beside it, read back by the UI and the CLI.

A run's process writes a heartbeat (the database's now()) every GROUNDING_RUN_HEARTBEAT_S from a thread of
its own. Whoever looks at the runs (the next run to start, `grounding runs`, the Training page), on any
host, fails a run still `running` whose heartbeat is older than GROUNDING_RUN_STALE_AFTER_S; on the run's
own host a run whose process has ended is failed at once, without waiting for its heartbeat to age.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from grounding import db, store
from grounding.config import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRun:
    """A stored run as `grounding runs` and the UI show it."""

    id: int
    repo: str
    kind: str
    status: str
    config: dict
    device: str | None
    checkpoint: str | None
    candidate_version_id: int | None
    decision: str | None
    reason: str | None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    started_at: object | None = None
    finished_at: object | None = None


class MetricsLog:
    """Buffers per-step metrics and writes them every `flush_every` steps (and at the end)."""

    def __init__(self, run_id: int, stage: str, *, flush_every: int = 50) -> None:
        self.run_id, self.stage, self.flush_every = run_id, stage, flush_every
        self.rows: list[tuple[int, dict]] = []
        self.history: list[tuple[int, dict]] = []

    def log(self, step: int, **metrics: float) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items() if v is not None}
        self.rows.append((step, clean))
        self.history.append((step, clean))
        if len(self.rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            with db.get_engine().begin() as conn:
                store.insert_training_metrics(conn, self.run_id, stage=self.stage, rows=self.rows)
            self.rows = []


def start_run(repo: str, *, kind: str, config: dict, device: str | None) -> int:
    """A new run row, `running`, owned by this process; runs of this host whose process is gone are failed first."""
    mark_dead_runs()
    with db.get_engine().begin() as conn:
        return store.insert_training_run(
            conn,
            store.repo_id(conn, repo),
            kind=kind,
            config=config,
            device=device,
            host=socket.gethostname(),
            pid=os.getpid(),
        )


def mark_dead_runs() -> list[int]:
    """Fail the runs still marked running whose process is gone: of any host, those whose heartbeat is older
    than GROUNDING_RUN_STALE_AFTER_S; of this host, also those whose process has ended (killed, crashed,
    power lost). Returns the ids it failed."""
    host = socket.gethostname()
    with db.get_engine().begin() as conn:
        silent = store.fail_silent_training_runs(conn, stale_after_s=get_settings().run_stale_after_s)
        dead = [(rid, pid) for rid, pid in store.running_training_runs(conn, host=host) if not _alive(pid)]
        for rid, pid in dead:
            store.update_training_run(
                conn,
                rid,
                status="failed",
                error=f"its process (pid {pid} on {host}) ended without finishing the run: killed or crashed",
                finished=True,
            )
    for rid, on, age in silent:
        log.warning("training run %d (on %s) sent no heartbeat for %.0f s: marked failed", rid, on, age)
    if dead:
        log.warning("training runs %s were left running by processes that ended; marked failed", [r for r, _ in dead])
    return sorted([rid for rid, _, _ in silent] + [rid for rid, _ in dead])


class Heartbeat:
    """A daemon thread that writes run `run_id`'s heartbeat every `every_s` seconds until stopped."""

    def __init__(self, run_id: int, *, every_s: float) -> None:
        self.run_id, self.every_s = run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 10)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with db.get_engine().begin() as conn:
                    if not store.beat_training_run(conn, self.run_id):
                        log.warning("training run %d is no longer running in the database: heartbeat stops", self.run_id)
                        return
            except Exception:  # a database blip: the next beat tries again; ten missed beats fail the run
                log.warning("training run %d: heartbeat not written", self.run_id, exc_info=True)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True  # a run from before pids were recorded: unknown, leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def update_run(run_id: int, **fields) -> None:
    with db.get_engine().begin() as conn:
        store.update_training_run(conn, run_id, **fields)


@contextlib.contextmanager
def recorded_run(repo: str, *, kind: str, config: dict, device: str | None) -> Iterator[int]:
    """A run row that ends `complete`, or `failed` with the error when the body raises; its process beats meanwhile."""
    run_id = start_run(repo, kind=kind, config=config, device=device)
    try:
        with Heartbeat(run_id, every_s=get_settings().run_heartbeat_s):
            yield run_id
    except BaseException as err:
        try:
            update_run(run_id, status="failed", error=f"{type(err).__name__}: {err}"[:2000], finished=True)
        except Exception:  # the database itself may be what failed: keep the original error
            log.exception("could not record the failure of training run %d", run_id)
        raise
    update_run(run_id, status="complete", finished=True)


def training_runs(repo: str | None = None, *, kind: str | None = None, limit: int | None = 20) -> list[TrainingRun]:
    """Stored runs, newest first, of one repository or all."""
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo) if repo is not None else None
        rows = store.training_runs(conn, repo_id, kind=kind, limit=limit)
    return [TrainingRun(**row) for row in rows]


def training_metrics(run_id: int, *, stage: str | None = None) -> list[dict]:
    """Per-step metrics of a run: dicts with stage, step and metrics."""
    with db.get_engine().connect() as conn:
        return store.training_metrics(conn, run_id, stage=stage)
