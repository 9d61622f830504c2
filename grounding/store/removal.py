"""What removing a repository takes: its rows and those of the eval indexes derived from it, found, then deleted."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "RemovalPlan",
    "removal_plan",
    "live_training_runs",
    "paths_used_elsewhere",
    "repo_ids_and_names",
    "database_identity",
    "training_run_ids",
    "delete_repos",
    "deletion_mark",
    "deleted_since",
]


@dataclass(frozen=True)
class RemovalPlan:
    """A repository and what goes with it; ids, names and run ids in `repos` order (the repository first)."""

    repo_ids: tuple[int, ...]
    names: tuple[str, ...]
    run_ids: tuple[int, ...]  # training runs of any of them (their directories are GROUNDING_HOME/runs/ID)
    checkpoints: tuple[str, ...]  # the checkpoint paths those runs recorded
    tokenizers: tuple[str, ...]  # RETRO databases' tokenizer directories
    derived: bool  # the repository is itself an eval index
    files: int  # paths stored for the repository itself, in any snapshot
    chunks: int  # its chunks, in any snapshot


def removal_plan(conn: Connection, repo: int) -> RemovalPlan:
    """`repo` and its eval indexes (repositories derived from it), with their runs and counts."""
    rows = conn.execute(
        sa.text(
            "SELECT id, name, derived_from IS NOT NULL FROM repositories WHERE id = :r OR derived_from = :r "
            "ORDER BY id <> :r, name"
        ),
        {"r": repo},
    ).all()
    ids = [rid for rid, _, _ in rows]
    runs = conn.execute(
        sa.text("SELECT id, checkpoint FROM training_runs WHERE repo_id = ANY(:ids) ORDER BY id"), {"ids": ids}
    ).all()
    tokenizers = conn.execute(
        sa.text("SELECT DISTINCT tokenizer FROM retro_databases WHERE repo_id = ANY(:ids) ORDER BY 1"), {"ids": ids}
    ).scalars()
    files, chunks = conn.execute(
        sa.text(
            "SELECT (SELECT count(DISTINCT path) FROM files WHERE repo_id = :r), "
            "(SELECT count(*) FROM chunks WHERE repo_id = :r)"
        ),
        {"r": repo},
    ).one()
    return RemovalPlan(
        repo_ids=tuple(ids),
        names=tuple(name for _, name, _ in rows),
        derived=rows[0][2],
        run_ids=tuple(rid for rid, _ in runs),
        checkpoints=tuple(path for _, path in runs if path),
        tokenizers=tuple(tokenizers),
        files=files,
        chunks=chunks,
    )


def live_training_runs(conn: Connection, repo_ids: tuple[int, ...], *, stale_after_s: float) -> list[int]:
    """Runs of these repositories still marked running whose heartbeat is fresh: a process is training on them."""
    return list(
        conn.execute(
            sa.text(
                "SELECT id FROM training_runs WHERE repo_id = ANY(:ids) AND status = 'running' "
                "AND (heartbeat_at IS NULL OR heartbeat_at >= now() - make_interval(secs => :s)) ORDER BY id"
            ),
            {"ids": list(repo_ids), "s": float(stale_after_s)},
        ).scalars()
    )


def paths_used_elsewhere(conn: Connection, repo_ids: tuple[int, ...]) -> list[str]:
    """Encoder names, tokenizer directories and sources that repositories other than these still use (a trained
    checkpoint given to another repository's `reindex --encoder`, a tokenizer given to another's RETRO, a
    directory another was ingested from), and the sources these were ingested from, eval indexes' aside
    (their trees are grounding's own)."""
    return list(
        conn.execute(
            sa.text(
                "SELECT encoder FROM index_versions WHERE repo_id <> ALL(:ids) "
                "UNION SELECT query_encoder FROM index_versions "
                "WHERE repo_id <> ALL(:ids) AND query_encoder IS NOT NULL "
                "UNION SELECT tokenizer FROM retro_databases WHERE repo_id <> ALL(:ids) "
                "UNION SELECT source FROM repositories WHERE id <> ALL(:ids) OR derived_from IS NULL"
            ),
            {"ids": list(repo_ids)},
        ).scalars()
    )


def database_identity(conn: Connection) -> str:
    """The cluster's system identifier and the database's name: which database this is, wherever it is reached.
    A role that may not read the control data gets the server's address and the name instead."""
    try:
        with conn.begin_nested():
            return conn.execute(
                sa.text("SELECT (SELECT system_identifier FROM pg_control_system())::text || '/' || current_database()")
            ).scalar_one()
    except sa.exc.DBAPIError:
        return conn.execute(
            sa.text(
                "SELECT coalesce(host(inet_server_addr()), 'socket') || ':' || coalesce(inet_server_port(), 0) "
                "|| '/' || current_database()"
            )
        ).scalar_one()


def repo_ids_and_names(conn: Connection) -> dict[int, str]:
    return dict(conn.execute(sa.text("SELECT id, name FROM repositories")).all())


def training_run_ids(conn: Connection) -> list[int]:
    return list(conn.execute(sa.text("SELECT id FROM training_runs")).scalars())


def delete_repos(conn: Connection, repo_ids: tuple[int, ...]) -> None:
    """Delete the repositories' rows; snapshots, files, chunks, vectors, postings, grants, eval and training
    runs and RETRO databases go with them (every table's key to a repository cascades)."""
    ids = {"ids": list(repo_ids)}
    # Each index version and RETRO database has a partial HNSW index of its own, which no cascade drops.
    for vid in conn.execute(sa.text("SELECT id FROM index_versions WHERE repo_id = ANY(:ids)"), ids).scalars():
        conn.execute(sa.text(f"DROP INDEX IF EXISTS embeddings_hnsw_v{int(vid)}"))
    for did in conn.execute(sa.text("SELECT id FROM retro_databases WHERE repo_id = ANY(:ids)"), ids).scalars():
        conn.execute(sa.text(f"DROP INDEX IF EXISTS retro_chunks_hnsw_d{int(did)}"))
    conn.execute(sa.text("DELETE FROM bm25_postings WHERE repo_id = ANY(:ids)"), ids)
    names = conn.execute(sa.text("DELETE FROM repositories WHERE id = ANY(:ids) RETURNING name"), ids).scalars()
    for name in names:  # in the delete's transaction: gone and recorded together
        conn.execute(sa.text("INSERT INTO repo_deletions (name_sha256) VALUES (:h)"), {"h": _name_hash(name)})


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def deletion_mark(conn: Connection) -> int:
    """The last value the deletes' sequence gave (0 before the first delete): what an ingest queued now saw."""
    return conn.execute(
        sa.text("SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence('repo_deletions', 'id')), 0)")
    ).scalar()


def deleted_since(conn: Connection, name: str, mark: int) -> bool:
    """Whether repository `name` was deleted after `deletion_mark` returned `mark`."""
    return conn.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM repo_deletions WHERE name_sha256 = :h AND id > :m)"),
        {"h": _name_hash(name), "m": mark},
    ).scalar()
