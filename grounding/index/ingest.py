"""Ingest one repository: list, chunk, embed and write what changed, then make the new snapshot current.

Unchanged files (same path and content hash) keep their rows and vectors. New content is written in
batches, each in its own transaction, as rows of the new snapshot that queries do not see yet; the
last transaction deletes what the snapshot no longer holds and moves the repository's pointer. A
crash anywhere leaves the previous snapshot answering, and a rerun reuses what the crashed run wrote.

Secrets are redacted from a file's text before it is chunked (grounding.index.secrets), so no chunk, lexical
vector or embedding holds one, and files that are secrets as a whole are skipped by the listing. A
file's hash is of its bytes as they are, so an unchanged file stays unchanged; a chunk's is of its
redacted text.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from grounding import db, store, validation
from grounding.config import get_settings
from grounding.errors import (
    AccessDenied,
    DatabaseUnavailable,
    EmptyRepository,
    GroundingError,
    IngestError,
    InvalidArgument,
    RepoNotFound,
    SourceConflict,
)
from grounding.index import home, sources
from grounding.index.embed import Embedder, load_embedder
from grounding.index.shards import MAX_SHARDS, ShardRunner, ShardStats, plan_shards, run_in_process, write_batches
from grounding.records import IngestReport, SourceFile

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
STAGES = ("list_read", "chunk", "embed", "write")
ANALYZE_AFTER_CHUNKS = 500  # refresh planner statistics after an ingest that changed this many chunks


def default_name(source: str) -> str:
    """The repository name a source gets when none is given: its last path segment, without `.git`."""
    tail = sources.display_url(source).rstrip("/").replace(":", "/").split("/")[-1]
    if not sources.is_git_url(source):
        tail = Path(source).expanduser().resolve().name or tail
    tail = tail[:-4] if tail.endswith(".git") else tail
    # Made to fit the name grammar: `My Project (old)` becomes `My-Project-old`.
    fitted = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-._")[:100].rstrip("-._")
    return fitted or "repository"


def _same_source(stored: str, given: str) -> bool:
    if sources.is_git_url(given) or sources.is_git_url(stored):
        return sources.display_url(given).rstrip("/") == stored.rstrip("/")
    return str(Path(given).expanduser().resolve()) == stored


def _check_target(
    record: store.RepoRecord | None,
    name: str,
    source: str,
    *,
    user: str | None,
    replace_source: bool,
    derived: bool,
    ref: str | None = None,
) -> None:
    """Refuse an ingest that would create, re-point or overwrite a repository the caller may not."""
    shown = sources.display_url(source)
    if user is not None:
        from grounding.access import authorize

        if record is None:
            raise AccessDenied(user, [name])  # only an administrator (a trusted caller) registers repositories
        authorize(user, [name])
        if record.derived_from is not None:
            raise AccessDenied(user, [name])
        if replace_source or not _same_source(record.source, source):
            raise SourceConflict(
                f"repository {name!r} is ingested from {record.source!r}; you may re-ingest it from there, "
                f"not from {shown!r}. An administrator can re-point it with `grounding ingest {shown} --name "
                f"{name} --replace-source`"
            )
        if ref is not None and not sources.is_git_url(record.source):
            raise InvalidArgument(
                f"repository {name!r} is read from a directory, as it is checked out there: a ref applies to "
                "repositories ingested from a git URL; re-ingest it without one"
            )
        if ref is not None and ref != record.ref:  # what everyone with a grant reads is not one reader's choice
            raise SourceConflict(
                f"repository {name!r} follows {record.ref or 'its default branch'!r}; you may re-ingest it there, "
                f"not at {ref!r}. An administrator can change that with `grounding ingest {shown} --name {name} "
                f"--ref {ref}`"
            )
        return
    if record is None:
        return
    if (record.derived_from is not None) != derived:
        what = "an eval index grounding derived" if record.derived_from else "an ordinary repository"
        raise SourceConflict(f"{name!r} is {what}; ingest under another name")
    if record.current_snapshot_id is not None and not replace_source and not _same_source(record.source, source):
        raise SourceConflict(
            f"repository {name!r} is ingested from {record.source!r}, not {shown!r}; pass --replace-source "
            "(replace_source=True) to read it from the new source from now on, or choose another --name"
        )


def not_as_queued(
    conn, name: str, record: store.RepoRecord | None, *, repo_id: int | None, deletion_mark: int | None
) -> bool:
    """Whether repository `name` (`record`: its row now, or None) is no longer what an ingest queued earlier saw:
    deleted since `store.deletion_mark` returned `deletion_mark`, or gone or another since it had `repo_id`."""
    if deletion_mark is not None and store.deleted_since(conn, name, deletion_mark):
        return True
    return repo_id is not None and (record is None or record.id != repo_id)


def ingest(
    source: str,
    *,
    name: str | None = None,
    ref: str | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
    wait: bool = True,
    after_batch: Callable[[int], None] | None = None,
    user: str | None = None,
    replace_source: bool = False,
    derived_from: str | None = None,
    shards: int = 1,
    run_shards: ShardRunner | None = None,
    repo_id: int | None = None,
    deletion_mark: int | None = None,
) -> IngestReport:
    """Ingest `source` (a path or git URL) as repository `name`, incrementally; returns what was done.

    A repository keeps the source it was first ingested from: another source is refused unless a trusted
    caller passes `replace_source`. With `user`, the repository must exist, be granted to them and be
    re-ingested from its own source (a user cannot register or re-point repositories).
    `derived_from` is grounding's own: it marks an eval index as derived from that repository.
    With `shards` > 1 the changed files are split into that many shards (grounding.index.shards), written
    by `run_shards` (flows/ingest.py runs them on Prefect's workers; default: one after another here);
    the snapshot becomes current once, after all of them. An ingest planned or queued before it runs (a
    refresh, a job of the API or the copilot) passes what it saw then: the repository's id, if it was
    registered, and `store.deletion_mark`. When the lock is taken it must still be that repository, and not
    deleted since: a delete wins over every ingest queued before it, which registers nothing.
    """
    if repo_id is not None:
        repo_id = validation.count(repo_id, "repo_id", maximum=2**31 - 1)
    if deletion_mark is not None:
        deletion_mark = validation.count(deletion_mark, "deletion_mark", minimum=0, maximum=2**63 - 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidArgument(f"shards must be a whole number from 1 to {MAX_SHARDS}, not {shards!r}")
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgument(f"source must be a directory or a git URL, not {source!r}")
    user = validation.user(user)
    ref = validation.git_ref(ref)
    is_url = sources.is_git_url(source)
    if is_url:
        sources.check_git_url(source)
    if derived_from is not None:
        if user is not None:
            raise AccessDenied(user, [name or source])
        name = validation.repo_name(name, derived_ok=True)
        if validation.DERIVED_NAME.fullmatch(name) is None or not name.startswith(derived_from + "~"):
            raise InvalidArgument(f"{name!r} is not an eval index name of {derived_from!r}")
    else:
        name = validation.repo_name(name if name is not None else default_name(source))
    settings = get_settings()
    engine = db.get_engine()
    seconds = dict.fromkeys(STAGES, 0.0)
    if user is not None:
        from grounding.access import authorize

        authorize(user, [name])  # before the lock: a busy repository says nothing to someone who may not read it
    with store.repo_lock(engine, name, wait=wait):
        with engine.begin() as conn:
            home.note_database(conn)  # this home's id-named files (clones) are this database's
            record = store.repo_record(conn, name)
            if not_as_queued(conn, name, record, repo_id=repo_id, deletion_mark=deletion_mark):
                again = "" if record is None else ", and registered again from another request"
                raise RepoNotFound(
                    name,
                    why=f"repository {name!r} was deleted after this ingest was queued{again}; nothing was "
                    f"ingested. Start a new ingest to read it again",
                )
            parent = store.repo_id(conn, derived_from) if derived_from is not None else None
        checkout = None
        if user is None and not is_url:
            # A trusted caller hears first that the path is wrong; a user must not probe the server's disk.
            checkout = sources.open_source(source, checkouts=settings.checkouts_dir, name="_", ref=ref)
        _check_target(
            record, name, source, user=user, replace_source=replace_source, derived=parent is not None, ref=ref
        )
        if user is not None and is_url:
            ref = record.ref  # a reader's re-ingest reads the ref the repository is registered at, no other
        if record is not None:  # before the checkout opens: a shard a dead run left must not move it under us
            with engine.begin() as conn:
                store.fail_interrupted(conn, record.id)
        t = time.perf_counter()
        created = False
        if record is None:
            # The id comes first: a clone's directory is named by it, never by user text.
            with engine.begin() as conn:
                repo = store.upsert_repo(conn, name, source=sources.display_url(source), ref=ref, derived_from=parent)
            created = True
        else:
            repo = record.id
        try:
            checkout = checkout or sources.open_source(
                source, checkouts=settings.checkouts_dir, name=sources.checkout_key(repo), ref=ref
            )
            listing = sources.list_files(
                checkout, max_bytes=settings.max_file_bytes, max_line_length=settings.max_line_length
            )
            if not listing.files:
                reasons = _reasons(listing.skipped)
                raise EmptyRepository(
                    f"{sources.display_url(source)!r} has no file to index ({len(listing.skipped)} skipped"
                    f"{': ' + reasons if reasons else ''}); point at a directory with source code"
                )
        except BaseException:
            if created:  # a first ingest that never read anything registers nothing
                with engine.begin() as conn:
                    store.delete_repo(conn, repo)
            raise
        seconds["list_read"] = time.perf_counter() - t
        with engine.begin() as conn:
            store.upsert_repo(conn, name, source=checkout.source, ref=checkout.ref, derived_from=parent)
            snapshot = store.begin_snapshot(conn, repo, commit=checkout.commit, ref=checkout.ref)
        try:
            report = _write_snapshot(
                engine,
                name,
                repo,
                snapshot,
                checkout,
                listing,
                embedder,
                progress,
                after_batch,
                seconds,
                shards,
                run_shards,
            )
        except BaseException as err:
            try:
                with engine.begin() as conn:
                    store.fail_snapshot(conn, snapshot, error=f"{type(err).__name__}: {err}")
            except sa.exc.DBAPIError:
                log.warning("could not record the failure of snapshot %s: the database is gone too", snapshot)
            if isinstance(err, (GroundingError, KeyboardInterrupt, SystemExit)):
                raise
            if isinstance(err, sa.exc.DBAPIError) and (
                err.connection_invalidated or isinstance(err, sa.exc.OperationalError)
            ):
                raise DatabaseUnavailable(
                    f"the database stopped answering during the ingest of {name!r} ({type(err.orig).__name__}); "
                    "the previous snapshot stays active, and a rerun resumes from what was written"
                ) from err
            raise IngestError(
                f"ingest of {name!r} failed ({type(err).__name__}: {err}); the previous snapshot stays active, "
                "and a rerun resumes from what was written"
            ) from err
    log.info("ingested %s: %s", name, report)
    _follow_retro(name, listing.files, snapshot, checkout.commit)  # cheap when they hold these files already
    return report


def _follow_retro(name: str, files, snapshot: int, commit: str | None) -> None:
    """Bring the repository's RETRO databases to the snapshot just made current (outside the repository's
    lock: nothing here changes what search reads). A failure leaves them where they were and the ingest done."""
    try:
        from grounding.index import retro_db

        retro_db.follow_snapshot(name, files, snapshot=snapshot, commit=commit)
    except Exception as err:  # noqa: BLE001 - the snapshot is current; completion reads the older database
        log.warning("the retrieval databases of %s stay at their snapshot: %s: %s", name, type(err).__name__, err)


def _reasons(skipped) -> str:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))


def _write_snapshot(
    engine, name, repo, snapshot, checkout, listing, embedder, progress, after_batch, seconds, shards, run_shards
):
    with engine.begin() as conn:
        version = store.active_index_version(conn, repo)
        stored = store.existing_files(conn, repo)
        current, _ = store.current_snapshot(conn, repo)
    visible_paths = {path for (path, _), (_, snap, _) in stored.items() if current is not None and snap <= current}
    keep: list[int] = []
    todo: list[SourceFile] = []
    reclassified: list[tuple[int, str]] = []  # unchanged files whose role a newer classifier sees otherwise
    for f in listing.files:
        found = stored.get((f.path, f.index_hash))
        if found is not None:
            keep.append(found[0])
            if found[2] != f.role:
                reclassified.append((found[0], f.role))
        else:
            todo.append(f)
    unchanged_ids = list(keep)

    done = ShardStats()
    shard_stats: dict[str, dict] = {}  # what each shard's batches did, kept in the finished snapshot's stats
    if todo:
        if version is not None:
            embedder = load_embedder(version.encoder)
        embedder = embedder or load_embedder(get_settings().encoder)
        with engine.begin() as conn:
            if version is None:
                version = store.building_index_version(conn, repo, encoder=embedder.name) or (
                    store.create_index_version(conn, repo, encoder=embedder.name, dim=embedder.dim)
                )
        if shards == 1:
            done = write_batches(
                engine,
                repo,
                snapshot,
                version,
                todo,
                embedder=embedder,
                progress=progress and (lambda n: progress("files", n, len(todo))),
                after_batch=after_batch,
            )
        else:
            plan = plan_shards(name, snapshot, version.id, todo, count=shards)
            with engine.begin() as conn:  # the shards read their files from here, never from their callers
                store.save_shard_plan(conn, snapshot, [(s.index, s.version, s.files) for s in plan])
            (run_shards or run_in_process)(plan)
            with engine.connect() as conn:
                by_shard = store.shard_batches(conn, snapshot)
            for shard in plan:  # every batch committed, by whichever run of the shard: a dead run's too
                counts = ShardStats.from_batches(by_shard.get(shard.index, []))
                done.add(counts)
                shard_stats[str(shard.index)] = {
                    "files": len(shard.files),
                    "batches": len(by_shard.get(shard.index, [])),
                    "chunks_written": counts.chunks_added,
                    "embedded": counts.embedded,
                }
        with engine.connect() as conn:
            written = store.snapshot_files(conn, repo, snapshot)
        lost = [f.path for f in todo if (f.path, f.index_hash) not in written]
        if lost:
            raise IngestError(f"{len(lost)} files were not written by any shard (first: {lost[0]!r}); rerun the ingest")
        added = [written[(f.path, f.index_hash)] for f in todo]
        keep.extend(added)
        if shards != 1:  # a shard run again after its worker died wrote some of them before: count them all
            with engine.connect() as conn:
                done.chunks_added = store.count_chunks(conn, added)
        for stage in ("chunk", "embed", "write"):
            seconds[stage] += done.seconds.get(stage, 0.0)
    embedded, reused, chunks_added, redacted = done.embedded, done.reused, done.chunks_added, done.redacted

    stats = {
        "files_seen": len(listing.files) + len(listing.skipped),
        "files_indexed": len(listing.files),
        "files_changed": len(todo),
        "files_unchanged": len(unchanged_ids),
        "files_deleted": len(visible_paths - {f.path for f in listing.files}),
        "files_skipped": len(listing.skipped),
        "non_utf8": [f.path for f in listing.files if f.decode_errors],
        "chunks_added": chunks_added,
        "embeddings_computed": embedded,
        "embeddings_reused": reused,
        "redacted": sum(redacted.values()),  # secrets replaced in the files this run chunked
        "redacted_files": sorted(redacted),
        "seconds": seconds,
        **({"shards": shard_stats} if shard_stats else {}),
    }
    if redacted:
        log.warning(
            "redacted %d secrets in %d files of %s before indexing (%s); rotate them if the repository is shared",
            stats["redacted"],
            len(redacted),
            name,
            ", ".join(stats["redacted_files"][:10]) + (" ..." if len(redacted) > 10 else ""),
        )
    t = time.perf_counter()
    with engine.begin() as conn:
        if store.lock_snapshot(conn, snapshot) != "running":  # first: a shard still writing is waited for
            raise IngestError(f"snapshot {snapshot} of {name!r} was ended by another run while this one wrote it")
        if version is not None and version.status == "building":
            store.build_vector_index(conn, version)
            store.activate_index_version(conn, version)
        store.set_roles(conn, reclassified)
        chunks_unchanged = store.count_chunks(conn, unchanged_ids)
        stats["chunks_unchanged"] = chunks_unchanged
        removed = store.finish_snapshot(conn, repo, snapshot, keep_file_ids=keep, stats=stats, skipped=listing.skipped)
    if chunks_added + removed >= ANALYZE_AFTER_CHUNKS:
        with engine.begin() as conn:
            store.analyze_chunks(conn)
    seconds["write"] += time.perf_counter() - t
    return IngestReport(
        repo=name,
        snapshot_id=snapshot,
        commit=checkout.commit,
        files_seen=stats["files_seen"],
        files_changed=len(todo),
        files_unchanged=len(unchanged_ids),
        files_deleted=stats["files_deleted"],
        chunks_added=chunks_added,
        chunks_removed=removed,
        chunks_unchanged=chunks_unchanged,
        embeddings_computed=embedded,
        embeddings_reused=reused,
        skipped=tuple(listing.skipped),
        non_utf8=tuple(stats["non_utf8"]),
        seconds=seconds,
        secrets_redacted=stats["redacted"],
    )
