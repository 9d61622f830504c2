"""Training runs, their per-step metrics, and the corpus a training loop reads."""

from __future__ import annotations

import json
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "insert_training_run",
    "running_training_runs",
    "beat_training_run",
    "fail_silent_training_runs",
    "update_training_run",
    "insert_training_metrics",
    "training_runs",
    "training_metrics",
    "promoted_checkpoint",
    "corpus_chunks",
]


def insert_training_run(
    conn: Connection, repo: int, *, kind: str, config: dict, device: str | None, host: str | None, pid: int | None
) -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO training_runs (repo_id, kind, status, config, device, host, pid, heartbeat_at) "
            "VALUES (:r, :k, 'running', CAST(:c AS jsonb), :d, :h, :p, now()) RETURNING id"
        ),
        {"r": repo, "k": kind, "c": json.dumps(config, default=str), "d": device, "h": host, "p": pid},
    ).scalar_one()


def running_training_runs(conn: Connection, *, host: str) -> list[tuple[int, int | None]]:
    """(id, pid) of the runs still marked running whose process is on `host`."""
    rows = conn.execute(
        sa.text("SELECT id, pid FROM training_runs WHERE status = 'running' AND host = :h ORDER BY id"), {"h": host}
    )
    return [(rid, pid) for rid, pid in rows]


def beat_training_run(conn: Connection, run_id: int) -> bool:
    """Write the database's now() as the run's heartbeat; False once the run is no longer running."""
    found = conn.execute(
        sa.text("UPDATE training_runs SET heartbeat_at = now() WHERE id = :id AND status = 'running' RETURNING id"),
        {"id": run_id},
    ).first()
    return found is not None


def fail_silent_training_runs(conn: Connection, *, stale_after_s: float) -> list[tuple[int, str | None, float]]:
    """Fail every running run (of any host) whose heartbeat is older than `stale_after_s` by the database's
    clock, so hosts' clocks never matter; (id, host, seconds since its last beat) of each. Runs without a
    heartbeat (from before heartbeats) are left to their own host's process check."""
    rows = conn.execute(
        sa.text(
            """UPDATE training_runs SET status = 'failed', finished_at = now(),
                   error = 'its process (pid ' || coalesce(pid::text, '?') || ' on ' || coalesce(host, '?')
                           || ') stopped its heartbeat ' || round(extract(epoch FROM now() - heartbeat_at))::text
                           || ' s ago without finishing the run: killed, crashed or cut off'
               WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => :s)
               RETURNING id, host, extract(epoch FROM now() - heartbeat_at)::float8"""
        ),
        {"s": float(stale_after_s)},
    ).all()
    return [(rid, host, age) for rid, host, age in rows]


_UPDATABLE = {"status", "checkpoint", "candidate_version_id", "decision", "reason", "metrics", "error", "finished"}


def update_training_run(conn: Connection, run_id: int, **fields) -> None:
    """Set some of status, checkpoint, candidate_version_id, decision, reason, metrics (merged), error, finished."""
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"unknown training run fields: {sorted(unknown)}")
    sets, params = [], {"id": run_id}
    for name, value in fields.items():
        if name == "metrics":
            sets.append("metrics = metrics || CAST(:metrics AS jsonb)")
            params["metrics"] = json.dumps(value)
        elif name == "finished":
            if value:
                sets.append("finished_at = now()")
        else:
            sets.append(f"{name} = :{name}")
            params[name] = value
    if sets:
        conn.execute(sa.text(f"UPDATE training_runs SET {', '.join(sets)} WHERE id = :id"), params)


def insert_training_metrics(conn: Connection, run_id: int, *, stage: str, rows: Iterable[tuple[int, dict]]) -> None:
    """Per-step metrics; a step written twice (a resumed logger) keeps the last values."""
    params = [{"r": run_id, "s": stage, "n": step, "m": json.dumps(m)} for step, m in rows]
    if params:
        conn.execute(
            sa.text(
                "INSERT INTO training_metrics (run_id, stage, step, metrics) VALUES (:r, :s, :n, CAST(:m AS jsonb)) "
                "ON CONFLICT (run_id, stage, step) DO UPDATE SET metrics = EXCLUDED.metrics"
            ),
            params,
        )


def training_runs(conn: Connection, repo: int | None = None, *, kind: str | None = None, limit: int | None = None):
    rows = conn.execute(
        sa.text(
            "SELECT t.id, r.name AS repo, t.kind, t.status, t.config, t.device, t.checkpoint, t.candidate_version_id, "
            "t.decision, t.reason, t.metrics, t.error, t.started_at, t.finished_at "
            "FROM training_runs t JOIN repositories r ON r.id = t.repo_id "
            "WHERE (CAST(:r AS integer) IS NULL OR t.repo_id = :r) AND (CAST(:k AS text) IS NULL OR t.kind = :k) "
            "ORDER BY t.id DESC LIMIT :n"
        ),
        {"r": repo, "k": kind, "n": limit},
    ).mappings()
    return [dict(row) for row in rows]


def promoted_checkpoint(conn: Connection, repo: str, *, kind: str) -> str | None:
    """The checkpoint of the newest finished run of `kind` on the repository named `repo` that the gate promoted."""
    return conn.execute(
        sa.text(
            "SELECT t.checkpoint FROM training_runs t JOIN repositories r ON r.id = t.repo_id "
            "WHERE r.name = :r AND t.kind = :k AND t.status = 'complete' AND t.decision = 'promoted' "
            "AND t.checkpoint IS NOT NULL ORDER BY t.id DESC LIMIT 1"
        ),
        {"r": repo, "k": kind},
    ).scalar()


def training_metrics(conn: Connection, run_id: int, *, stage: str | None = None) -> list[dict]:
    rows = conn.execute(
        sa.text(
            "SELECT stage, step, metrics FROM training_metrics WHERE run_id = :r "
            "AND (CAST(:s AS text) IS NULL OR stage = :s) ORDER BY stage, step"
        ),
        {"r": run_id, "s": stage},
    ).mappings()
    return [dict(row) for row in rows]


def corpus_chunks(conn: Connection, repo: int) -> list[tuple]:
    """(id, path, language, start_line, end_line, symbol, content_hash, embed text) of every visible chunk."""
    rows = conn.execute(
        sa.text(
            "SELECT c.id, f.path, f.language, c.start_line, c.end_line, c.symbol, c.content_hash, "
            "CASE WHEN c.context = '' THEN c.text ELSE c.context || E'\\n' || c.text END "
            "FROM chunks c JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = f.repo_id "
            "WHERE f.repo_id = :r AND f.snapshot_id <= r.current_snapshot_id ORDER BY c.id"
        ),
        {"r": repo},
    )
    return [tuple(row) for row in rows]
