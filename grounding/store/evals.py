"""Stored evaluation runs: what was asked of which index version, and how well it answered."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["insert_eval_run", "eval_runs"]


def insert_eval_run(
    conn: Connection,
    repo: int,
    *,
    dataset: str,
    split: str,
    mode: str,
    index_version_id: int | None,
    encoder: str | None,
    questions: int,
    metrics: dict[str, float],
) -> int:
    """Record one evaluation of `repo`; returns its id."""
    return conn.execute(
        sa.text(
            "INSERT INTO eval_runs (repo_id, dataset, split, mode, index_version_id, encoder, questions, metrics) "
            "VALUES (:r, :d, :s, :m, :v, :e, :q, CAST(:x AS jsonb)) RETURNING id"
        ),
        {
            "r": repo,
            "d": dataset,
            "s": split,
            "m": mode,
            "v": index_version_id,
            "e": encoder,
            "q": questions,
            "x": json.dumps(metrics),
        },
    ).scalar_one()


def eval_runs(conn: Connection, repo: int, *, limit: int | None = None) -> list[dict]:
    """The repository's evaluation runs, newest first, as column mappings."""
    rows = conn.execute(
        sa.text(
            "SELECT id, dataset, split, mode, index_version_id AS index_version, encoder, questions, metrics, "
            "created_at FROM eval_runs WHERE repo_id = :r ORDER BY id DESC LIMIT :n"
        ),
        {"r": repo, "n": limit},
    ).mappings()
    return [dict(row) for row in rows]
