"""What the UI shows about repositories: their state, snapshot history, skipped files, a running ingest."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "repo_statuses",
    "snapshot_history",
    "latest_snapshot",
    "skipped_reasons",
    "skipped_files_of",
    "visible_roles",
    "role_counts",
]


def repo_statuses(conn: Connection) -> list[dict]:
    """Every repository with its current snapshot, counts, active index version and most recent run."""
    rows = conn.execute(
        sa.text(
            """
            SELECT r.name, r.source, r.ref, r.current_snapshot_id AS snapshot_id, s.commit,
                   s.finished_at AS snapshot_finished_at,
                   (SELECT count(*) FROM files f WHERE f.repo_id = r.id AND f.snapshot_id <= r.current_snapshot_id)
                     AS files,
                   (SELECT count(*) FROM chunks c JOIN files f ON f.id = c.file_id
                     WHERE f.repo_id = r.id AND f.snapshot_id <= r.current_snapshot_id) AS chunks,
                   v.id AS index_version, v.encoder, v.query_encoder,
                   last.status AS last_status, last.error AS last_error, last.started_at AS last_started_at,
                   p.name AS derived_from
            FROM repositories r
            LEFT JOIN repositories p ON p.id = r.derived_from
            LEFT JOIN snapshots s ON s.id = r.current_snapshot_id
            LEFT JOIN index_versions v ON v.repo_id = r.id AND v.status = 'active'
            LEFT JOIN LATERAL (SELECT status, error, started_at FROM snapshots
                               WHERE repo_id = r.id ORDER BY id DESC LIMIT 1) last ON true
            ORDER BY r.name
            """
        )
    ).mappings()
    return [dict(row) for row in rows]


_SNAPSHOT_COLUMNS = (
    "s.id, s.status, s.commit, s.ref, s.started_at, s.finished_at, s.stats, s.error, "
    "(SELECT count(*) FROM skipped_files k WHERE k.snapshot_id = s.id) AS skipped, "
    # files this snapshot wrote so far: the progress of a running ingest
    "(SELECT count(*) FROM files f WHERE f.repo_id = s.repo_id AND f.snapshot_id = s.id) AS files_written"
)


def snapshot_history(conn: Connection, repo: int, *, limit: int | None = None) -> list[dict]:
    """The repository's snapshots, newest first."""
    rows = conn.execute(
        sa.text(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots s WHERE s.repo_id = :r ORDER BY s.id DESC LIMIT :n"),
        {"r": repo, "n": limit},
    ).mappings()
    return [dict(row) for row in rows]


def latest_snapshot(conn: Connection, name: str) -> dict | None:
    """The newest snapshot of a repository by name (running, complete or failed); None before its first ingest."""
    row = (
        conn.execute(
            sa.text(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots s JOIN repositories r ON r.id = s.repo_id "
                "WHERE r.name = :n ORDER BY s.id DESC LIMIT 1"
            ),
            {"n": name},
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


def skipped_reasons(conn: Connection, snapshot: int) -> dict[str, int]:
    """How many files a snapshot skipped, per reason."""
    rows = conn.execute(
        sa.text(
            "SELECT reason, count(*) FROM skipped_files WHERE snapshot_id = :s GROUP BY reason ORDER BY count(*) DESC"
        ),
        {"s": snapshot},
    )
    return {reason: n for reason, n in rows}


def skipped_files_of(conn: Connection, snapshot: int, *, limit: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of the files a snapshot skipped, by path."""
    rows = conn.execute(
        sa.text("SELECT path, reason FROM skipped_files WHERE snapshot_id = :s ORDER BY path LIMIT :n"),
        {"s": snapshot, "n": limit},
    )
    return [(path, reason) for path, reason in rows]


def role_counts(conn: Connection, repo: int) -> dict[str, int]:
    """Files of the repository's current snapshot per role, most first."""
    rows = conn.execute(
        sa.text(
            "SELECT f.role, count(*) FROM files f JOIN repositories r ON r.id = f.repo_id "
            "WHERE f.repo_id = :r AND f.snapshot_id <= r.current_snapshot_id GROUP BY f.role ORDER BY 2 DESC, 1"
        ),
        {"r": repo},
    )
    return {role: n for role, n in rows}


def visible_roles(
    conn: Connection, repo: int, *, role: str | None = None, limit: int = 1000
) -> list[tuple[str, str, str, int]]:
    """(path, role, language, chunks) of the current snapshot's files (of `role`, if given), by path, at most limit."""
    rows = conn.execute(
        sa.text(
            "SELECT f.path, f.role, f.language, (SELECT count(*) FROM chunks c WHERE c.file_id = f.id) "
            "FROM files f JOIN repositories r ON r.id = f.repo_id "
            "WHERE f.repo_id = :r AND f.snapshot_id <= r.current_snapshot_id AND (CAST(:role AS text) IS NULL "
            "OR f.role = :role) ORDER BY f.path LIMIT :n"
        ),
        {"r": repo, "role": role, "n": limit},
    )
    return [tuple(row) for row in rows]
