"""Repositories, snapshots and the per-repository lock."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from grounding.errors import IngestBusy, RepoNotFound
from grounding.records import RepoInfo, SkippedFile

_LOCK_CLASS = 0x6772  # first key of the per-repository advisory lock


__all__ = [
    "analyze_chunks",
    "repo_lock",
    "repo_id",
    "repo_source",
    "repo_names",
    "repo_record",
    "RepoRecord",
    "upsert_repo",
    "delete_repo",
    "derived_parent",
    "begin_snapshot",
    "fail_interrupted",
    "fail_snapshot",
    "finish_snapshot",
    "list_repos",
    "current_snapshot",
    "snapshot",
    "hold_running_snapshot",
    "lock_snapshot",
    "snapshot_files",
    "claim_files",
    "save_shard_plan",
    "shard_plan",
    "add_shard_batch",
    "shard_batches",
    "update_bm25_stats",
    "rebuild_bm25_stats",
    "REBUILD_BM25_STATS",
]


# --- locking -----------------------------------------------------------------------------------


@contextlib.contextmanager
def repo_lock(engine: Engine, name: str, *, wait: bool = True) -> Iterator[None]:
    """Hold the repository's advisory lock on a dedicated connection: ingests and reindexes never interleave."""
    with engine.connect() as conn:
        args = {"c": _LOCK_CLASS, "n": name}
        if wait:
            conn.execute(sa.text("SELECT pg_advisory_lock(:c, hashtext(:n))"), args)
        elif not conn.execute(sa.text("SELECT pg_try_advisory_lock(:c, hashtext(:n))"), args).scalar():
            raise IngestBusy(
                f"repository {name!r} is being ingested or reindexed by another run; try again when it ends"
            )
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:c, hashtext(:n))"), args)
            conn.commit()


# --- repositories and snapshots ----------------------------------------------------------------


def repo_id(conn: Connection, name: str) -> int:
    """The id of an ingested repository; RepoNotFound names the known ones otherwise."""
    found = conn.execute(sa.text("SELECT id FROM repositories WHERE name = :n"), {"n": name}).scalar()
    if found is None:
        known = list(conn.execute(sa.text("SELECT name FROM repositories ORDER BY name")).scalars())
        raise RepoNotFound(name, known)
    return found


def repo_source(conn: Connection, name: str) -> tuple[str, str | None, str | None]:
    """(source, ref, commit of the current snapshot) of an ingested repository."""
    rid = repo_id(conn, name)
    row = conn.execute(
        sa.text(
            "SELECT r.source, r.ref, s.commit FROM repositories r "
            "LEFT JOIN snapshots s ON s.id = r.current_snapshot_id WHERE r.id = :r"
        ),
        {"r": rid},
    ).one()
    return row[0], row[1], row[2]


def repo_names(conn: Connection, *, derived: bool = True) -> list[str]:
    """Every repository's name, sorted; without the derived eval indexes when `derived` is False."""
    where = "" if derived else " WHERE derived_from IS NULL"
    return list(conn.execute(sa.text(f"SELECT name FROM repositories{where} ORDER BY name")).scalars())


@dataclass(frozen=True)
class RepoRecord:
    """A repository's catalogue row: where it is read from, and what it was derived from (eval indexes)."""

    id: int
    name: str
    source: str
    ref: str | None
    current_snapshot_id: int | None
    derived_from: str | None  # the parent's name, for an eval index grounding derived from it


def repo_record(conn: Connection, name: str) -> RepoRecord | None:
    """The catalogue row of repository `name`, or None if it was never registered."""
    row = conn.execute(
        sa.text(
            "SELECT r.id, r.name, r.source, r.ref, r.current_snapshot_id, p.name FROM repositories r "
            "LEFT JOIN repositories p ON p.id = r.derived_from WHERE r.name = :n"
        ),
        {"n": name},
    ).one_or_none()
    return None if row is None else RepoRecord(*row)


def derived_parent(conn: Connection, name: str) -> str | None:
    """The repository an eval index was derived from, or None for an ordinary (or unknown) repository."""
    record = repo_record(conn, name)
    return None if record is None else record.derived_from


def upsert_repo(conn: Connection, name: str, *, source: str, ref: str | None, derived_from: int | None = None) -> int:
    """Register `name` (or update where it is read from); `derived_from` marks an eval index by its parent's id."""
    return conn.execute(
        sa.text(
            "INSERT INTO repositories (name, source, ref, derived_from) VALUES (:n, :s, :r, :d) "
            "ON CONFLICT (name) DO UPDATE SET source = EXCLUDED.source, ref = EXCLUDED.ref, "
            "derived_from = EXCLUDED.derived_from RETURNING id"
        ),
        {"n": name, "s": source, "r": ref, "d": derived_from},
    ).scalar_one()


def delete_repo(conn: Connection, repo: int) -> None:
    """Forget a repository and everything it owns (a first ingest that never got a snapshot)."""
    conn.execute(sa.text("DELETE FROM repositories WHERE id = :r"), {"r": repo})


def fail_interrupted(conn: Connection, repo: int, *, wait_s: float = 300.0) -> None:
    """Mark failed the snapshots of `repo` still running. Called under the repository lock, before the checkout is
    opened: a run still marked running has died, and a shard it left (which holds its snapshot's row while it moves
    the checkout) is waited for here, at most `wait_s`, or refused from now on."""
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'"))
    try:
        with conn.begin_nested():
            conn.execute(
                sa.text(
                    "UPDATE snapshots SET status = 'failed', finished_at = now(), "
                    "error = 'interrupted: the run ended without finishing' WHERE repo_id = :r AND status = 'running'"
                ),
                {"r": repo},
            )
    except sa.exc.OperationalError as err:
        if getattr(err.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise IngestBusy(
            f"a shard of an interrupted ingest of this repository is still opening its checkout after {wait_s:.0f}s; "
            "retry when it has ended (or cancel its ingest-shard flow run)"
        ) from err
    conn.execute(sa.text("SET LOCAL lock_timeout = 0"))


def begin_snapshot(conn: Connection, repo: int, *, commit: str | None, ref: str | None) -> int:
    """Open a running snapshot, under the repository lock and after fail_interrupted."""
    fail_interrupted(conn, repo)  # one running snapshot per repository at most
    return conn.execute(
        sa.text("INSERT INTO snapshots (repo_id, commit, ref, status) VALUES (:r, :c, :f, 'running') RETURNING id"),
        {"r": repo, "c": commit, "f": ref},
    ).scalar_one()


def fail_snapshot(conn: Connection, snapshot: int, *, error: str) -> None:
    conn.execute(
        sa.text("UPDATE snapshots SET status = 'failed', finished_at = now(), error = :e WHERE id = :s"),
        {"s": snapshot, "e": error[:4000]},
    )


def finish_snapshot(
    conn: Connection,
    repo: int,
    snapshot: int,
    *,
    keep_file_ids: Sequence[int],
    stats: dict,
    skipped: Sequence[SkippedFile],
) -> int:
    """Make the snapshot current: drop every file row it does not keep, move the pointer. Returns chunks removed.

    BM25's statistics move with it, in the same transaction: the chunks of files that become visible
    (written by this run, or by a failed one and kept) are counted in, those of visible files that go
    are counted out; files a failed run left and this one drops were never counted.
    """
    update_bm25_stats(conn, repo, keep_file_ids)
    removed = conn.execute(
        sa.text(
            "SELECT count(*) FROM chunks c JOIN files f ON f.id = c.file_id "
            "WHERE f.repo_id = :r AND NOT (f.id = ANY(:keep))"
        ),
        {"r": repo, "keep": list(keep_file_ids)},
    ).scalar_one()
    conn.execute(
        sa.text("DELETE FROM files WHERE repo_id = :r AND NOT (id = ANY(:keep))"),
        {"r": repo, "keep": list(keep_file_ids)},
    )
    stats = {**stats, "chunks_removed": removed}
    if skipped:
        raw = conn.connection.driver_connection
        with raw.cursor().copy("COPY skipped_files (snapshot_id, path, reason) FROM STDIN") as copy:
            for s in skipped:
                copy.write_row((snapshot, s.path, s.reason))
    conn.execute(
        sa.text(
            "UPDATE snapshots SET status = 'complete', finished_at = now(), stats = CAST(:st AS jsonb) WHERE id = :s"
        ),
        {"s": snapshot, "st": json.dumps(stats)},
    )
    conn.execute(sa.text("UPDATE repositories SET current_snapshot_id = :s WHERE id = :r"), {"s": snapshot, "r": repo})
    return removed


def list_repos(conn: Connection) -> list[RepoInfo]:
    rows = conn.execute(
        sa.text(
            """
            SELECT r.id, r.name, r.source, r.current_snapshot_id, s.commit, s.finished_at,
                   (SELECT count(*) FROM files f WHERE f.repo_id = r.id AND f.snapshot_id <= r.current_snapshot_id),
                   (SELECT count(*) FROM chunks c JOIN files f ON f.id = c.file_id
                     WHERE f.repo_id = r.id AND f.snapshot_id <= r.current_snapshot_id),
                   v.id, v.encoder, last.status, last.error
            FROM repositories r
            LEFT JOIN snapshots s ON s.id = r.current_snapshot_id
            LEFT JOIN index_versions v ON v.repo_id = r.id AND v.status = 'active'
            LEFT JOIN LATERAL (SELECT status, error FROM snapshots WHERE repo_id = r.id ORDER BY id DESC LIMIT 1) last
                   ON true
            ORDER BY r.name
            """
        )
    ).all()
    return [RepoInfo(*row) for row in rows]


def current_snapshot(conn: Connection, repo: int) -> tuple[int | None, str | None]:
    row = conn.execute(
        sa.text(
            "SELECT r.current_snapshot_id, s.commit FROM repositories r "
            "LEFT JOIN snapshots s ON s.id = r.current_snapshot_id WHERE r.id = :r"
        ),
        {"r": repo},
    ).one()
    return row[0], row[1]


def snapshot(conn: Connection, snapshot_id: int) -> dict | None:
    """The snapshot's row, or None if there is none with this id."""
    row = conn.execute(sa.text("SELECT * FROM snapshots WHERE id = :s"), {"s": snapshot_id}).mappings().one_or_none()
    return dict(row) if row is not None else None


def hold_running_snapshot(conn: Connection, repo: int, snapshot: int) -> bool:
    """Whether `snapshot` of `repo` still runs, held so until this transaction ends (a shard's write):
    finishing or failing it waits, so no row lands in a snapshot after it became current."""
    status = conn.execute(
        sa.text("SELECT status FROM snapshots WHERE id = :s AND repo_id = :r FOR SHARE"), {"s": snapshot, "r": repo}
    ).scalar()
    return status == "running"


def snapshot_files(conn: Connection, repo: int, snapshot: int) -> dict[tuple[str, str], int]:
    """(path, content hash) -> file id of the rows written for `snapshot` (the lowest id where a retried shard
    wrote one twice: the other is dropped when the snapshot finishes)."""
    rows = conn.execute(
        sa.text(
            "SELECT path, content_hash, min(id) FROM files WHERE repo_id = :r AND snapshot_id = :s "
            "GROUP BY path, content_hash"
        ),
        {"r": repo, "s": snapshot},
    )
    return {(path, h): fid for path, h, fid in rows}


def lock_snapshot(conn: Connection, snapshot: int) -> str | None:
    """Take the snapshot's row for this transaction (the one that finishes it) and return its status: a shard
    still writing is waited for, and one that comes later finds the snapshot no longer running."""
    return conn.execute(sa.text("SELECT status FROM snapshots WHERE id = :s FOR UPDATE"), {"s": snapshot}).scalar()


_SHARD_LOCK_BASE = 1 << 62  # single-key advisory locks of shard writes: (snapshot << 16) + shard, above this


def claim_files(conn: Connection, repo: int, snapshot: int, shard: int, paths: Sequence[tuple[str, str]]) -> set:
    """Of these (path, content hash) pairs, those another run of the same shard already wrote into `snapshot`.

    Taken first in a shard's write transaction: two runs of one shard (a crashed one that lives on) write
    one after the other, and the second leaves out what the first wrote instead of colliding with it."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SHARD_LOCK_BASE + (snapshot << 16) + shard})
    rows = conn.execute(
        sa.text("SELECT path, content_hash FROM files WHERE repo_id = :r AND snapshot_id = :s AND path = ANY(:p)"),
        {"r": repo, "s": snapshot, "p": sorted({path for path, _ in paths})},
    )
    return {(path, h) for path, h in rows} & set(paths)


def save_shard_plan(
    conn: Connection, snapshot: int, plan: Sequence[tuple[int, int, Sequence[tuple[str, str]]]]
) -> None:
    """Each shard of a sharded ingest: (shard number, index version, [(path, content hash), ...])."""
    conn.execute(
        sa.text(
            "INSERT INTO ingest_shards (snapshot_id, shard, index_version_id, files) "
            "VALUES (:s, :i, :v, CAST(:f AS jsonb))"
        ),
        [
            {"s": snapshot, "i": index, "v": version, "f": json.dumps([list(f) for f in files])}
            for index, version, files in plan
        ],
    )


def shard_plan(conn: Connection, snapshot: int, shard: int) -> tuple[int, list[tuple[str, str]]] | None:
    """(index version, files) of one shard of `snapshot`, or None when the ingest planned no such shard."""
    row = conn.execute(
        sa.text("SELECT index_version_id, files FROM ingest_shards WHERE snapshot_id = :s AND shard = :i"),
        {"s": snapshot, "i": shard},
    ).one_or_none()
    return None if row is None else (row[0], [(path, h) for path, h in row[1]])


def add_shard_batch(conn: Connection, snapshot: int, shard: int, counts: dict) -> None:
    """What one write batch of a shard did, appended in the transaction that writes its rows."""
    conn.execute(
        sa.text(
            "UPDATE ingest_shards SET batches = batches || jsonb_build_array(CAST(:c AS jsonb)) "
            "WHERE snapshot_id = :s AND shard = :i"
        ),
        {"s": snapshot, "i": shard, "c": json.dumps(counts)},
    )


def shard_batches(conn: Connection, snapshot: int) -> dict[int, list[dict]]:
    """Every write batch each shard of `snapshot` committed, whichever run of it wrote them."""
    rows = conn.execute(
        sa.text("SELECT shard, batches FROM ingest_shards WHERE snapshot_id = :s ORDER BY shard"), {"s": snapshot}
    )
    return {shard: batches for shard, batches in rows}


def analyze_chunks(conn: Connection) -> None:
    """Refresh the planner's statistics of the tables an ingest grows: chunks and BM25's postings and terms."""
    for table in ("chunks", "bm25_postings", "bm25_terms"):
        conn.execute(sa.text(f"ANALYZE {table}"))


_BM25_MOVES = """
    WITH cur AS (SELECT coalesce(current_snapshot_id, 0) AS s FROM repositories WHERE id = :r),
    moved AS (
        SELECT f.id, CASE WHEN f.snapshot_id > cur.s THEN 1 ELSE -1 END AS d FROM files f, cur
        WHERE f.repo_id = :r AND ((f.snapshot_id > cur.s AND f.id = ANY(:keep))
                                  OR (f.snapshot_id <= cur.s AND NOT f.id = ANY(:keep)))),
    chunk_moves AS (SELECT c.id, c.bm25_length, m.d FROM chunks c JOIN moved m ON m.id = c.file_id)
"""


def update_bm25_stats(conn: Connection, repo: int, keep_file_ids: Sequence[int]) -> None:
    """BM25's document frequencies and corpus size after the repository's visible files become `keep_file_ids`."""
    params = {"r": repo, "keep": list(keep_file_ids)}
    conn.execute(
        sa.text(
            _BM25_MOVES
            + """
            , totals AS (SELECT coalesce(sum(d), 0) AS n, coalesce(sum(d * bm25_length), 0) AS len FROM chunk_moves)
            UPDATE repositories SET bm25_docs = bm25_docs + totals.n, bm25_length = bm25_length + totals.len
            FROM totals WHERE id = :r"""
        ),
        params,
    )
    conn.execute(
        sa.text(
            _BM25_MOVES
            + """
            INSERT INTO bm25_terms (repo_id, term, df)
            SELECT :r, p.term, sum(m.d) FROM chunk_moves m JOIN bm25_postings p ON p.chunk_id = m.id
            GROUP BY p.term HAVING sum(m.d) <> 0
            ON CONFLICT (repo_id, term) DO UPDATE SET df = bm25_terms.df + EXCLUDED.df"""
        ),
        params,
    )
    conn.execute(sa.text("DELETE FROM bm25_terms WHERE repo_id = :r AND df <= 0"), {"r": repo})


REBUILD_BM25_STATS = """
    DELETE FROM bm25_terms WHERE repo_id = :r;
    INSERT INTO bm25_terms (repo_id, term, df)
    SELECT p.repo_id, p.term, count(*) FROM bm25_postings p JOIN repositories r ON r.id = p.repo_id
    WHERE p.repo_id = :r AND p.snapshot_id <= r.current_snapshot_id GROUP BY p.repo_id, p.term;
    UPDATE repositories r SET bm25_docs = s.n, bm25_length = s.len
    FROM (SELECT count(*) AS n, coalesce(sum(c.bm25_length), 0) AS len
          FROM chunks c JOIN files f ON f.id = c.file_id JOIN repositories x ON x.id = f.repo_id
          WHERE f.repo_id = :r AND f.snapshot_id <= x.current_snapshot_id) s
    WHERE r.id = :r
"""  # migration 0009 runs it for every repository


def rebuild_bm25_stats(conn: Connection, repo: int) -> None:
    """BM25's statistics of one repository counted again from its visible postings."""
    for statement in filter(str.strip, REBUILD_BM25_STATS.split(";")):
        conn.execute(sa.text(statement), {"r": repo})
