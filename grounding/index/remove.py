"""Remove a repository: its rows and its eval indexes' from the database, then its files under GROUNDING_HOME.

The rows go first, in one transaction under the repository's lock: from its commit on, no question
finds the code. Then the directories grounding made for it under GROUNDING_HOME (its checkout, eval
trees, RETRO tokenizers, the training runs' checkpoints) are deleted. A directory that holds, or lies
in, a path some repository records (the source a repository was ingested from, this one's too; a
checkpoint given to another's `reindex --encoder`; a tokenizer) is kept and reported, and so is a
symbolic link. GROUNDING_HOME's own subdirectories (`eval/`, `runs/`, ...) may be links to other
disks: what grounding keeps there is deleted there.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from grounding import db, store, validation
from grounding.config import get_settings
from grounding.errors import IngestBusy, SourceConflict
from grounding.index import home, sources

log = logging.getLogger(__name__)

HASHED = re.compile(r"-[0-9a-f]{16}$")  # validation.directory_name's suffix


@dataclass(frozen=True)
class RemovalReport:
    repo: str
    removed: tuple[str, ...]  # the repository, then the eval indexes derived from it
    files: int  # paths stored for the repository, in any snapshot
    chunks: int
    training_runs: int
    deleted: tuple[Path, ...]  # directories removed from GROUNDING_HOME
    kept: tuple[Path, ...]  # directories of it that another repository still uses, or that could not be removed
    dry_run: bool = False


def _legacy_names(repo: str) -> tuple[str, str]:
    """How eval and RETRO directories were named before they carried a hash (see validation.directory_name)."""
    eval_name = re.sub(r"[^\w.-]", "_", repo).lstrip(".") or "_"
    retro_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in repo)
    return eval_name, retro_name


def _directories(plan: store.RemovalPlan, others: list[str]) -> list[Path]:
    """The directories grounding keeps for the repositories of `plan`; `others`: every other repository's name."""
    settings = get_settings()
    found = [settings.checkouts_dir / sources.checkout_key(rid) for rid in plan.repo_ids]
    found += [settings.runs_dir / str(run) for run in plan.run_ids]
    if not plan.derived:  # eval trees and tokenizers are kept under the repository an eval index derives from
        repo = plan.names[0]
        found += [settings.eval_dir(repo), settings.retro_dir(repo)]
        # An old name was not one-to-one (`acme/api` and `acme_api`; `Foo` and `foo` on a case-insensitive
        # disk): one another repository also had is left. One that looks hashed could be another's of today.
        taken = {name.lower() for other in others for name in _legacy_names(other)}
        found += [
            settings.home / kind / name
            for kind, name in zip(("eval", "retro"), _legacy_names(repo), strict=True)
            if not HASHED.search(name) and name.lower() not in taken
        ]
    return [d for d in dict.fromkeys(found) if d.is_dir()]


def _used(directory: Path, uses: list[str]) -> bool:
    """Whether a path a repository records (an encoder name such as `realm:/path#query`, a tokenizer or
    source directory) lies in `directory`, or `directory` lies in it."""
    forms = {str(directory), str(directory.resolve())}
    pattern = re.compile("|".join(re.escape(f) for f in sorted(forms)) + r"(?=$|[/#])")
    around = any(form.startswith(use.rstrip("/") + "/") for use in uses if use.startswith("/") for form in forms)
    return around or any(pattern.search(use) for use in uses)


def _delete(directories: list[Path], uses: list[str], *, dry_run: bool) -> tuple[list[Path], list[Path]]:
    """(deleted, kept) of `directories`: a link, or one a recorded path lies in or around, is kept."""
    deleted, kept = [], []
    for directory in directories:
        if directory.is_symlink() or _used(directory, uses):  # a link's target is not grounding's to delete
            kept.append(directory)
        elif dry_run:
            deleted.append(directory)
        else:
            try:
                shutil.rmtree(directory)
                deleted.append(directory)
            except OSError as err:
                log.warning("could not remove %s: %s", directory, err)
                kept.append(directory)
    return deleted, kept


def remove_repo(repo: str, *, dry_run: bool = False, wait: bool = True) -> RemovalReport:
    """Delete repository `repo` with its eval indexes, chunks, vectors, grants, eval and training runs, RETRO
    databases, and the files grounding keeps for them. `dry_run` reports what would go and changes nothing.
    `wait=False` raises IngestBusy instead of waiting for an ingest or reindex of it to end."""
    repo = validation.repo_name(repo, derived_ok=True)
    settings = get_settings()
    engine = db.get_engine()
    with ExitStack() as locks:
        locks.enter_context(store.repo_lock(engine, repo, wait=wait))
        with engine.connect() as conn:
            plan = store.removal_plan(conn, store.repo_id(conn, repo))
        for name in plan.names[1:]:  # an eval build of a derived index holds that index's lock
            locks.enter_context(store.repo_lock(engine, name, wait=wait))
        with engine.begin() as conn:
            # As it is now; an eval index registered since the first read is deleted without its lock held
            # (its ingest then fails: the repository it derives from is gone).
            plan = store.removal_plan(conn, store.repo_id(conn, repo))
            live = store.live_training_runs(conn, plan.repo_ids, stale_after_s=settings.run_stale_after_s)
            if live:
                raise IngestBusy(
                    f"training run{'s' if len(live) > 1 else ''} {', '.join(map(str, live))} of {repo!r} "
                    "is still running; wait for it to end (`grounding runs`) or stop it, then remove the repository"
                )
            uses = store.paths_used_elsewhere(conn, plan.repo_ids)
            others = [name for rid, name in store.repo_ids_and_names(conn).items() if rid not in plan.repo_ids]
            directories = _directories(plan, others)
            # Clones and runs are named by ids: in a home another database also uses they may be its own.
            by_id = [] if home.home_is_ours(conn) else [d for d in directories if _is_id_named(d)]
            if not dry_run:
                store.delete_repos(conn, plan.repo_ids)
        deleted, kept = _delete([d for d in directories if d not in by_id], uses, dry_run=dry_run)
        kept += by_id
    # A checkpoint written under another GROUNDING_HOME is not removed: say where it is.
    elsewhere = [
        Path(c)
        for c in plan.checkpoints
        if Path(c).exists() and not any(Path(c).is_relative_to(d) for d in deleted + kept)
    ]
    if not dry_run:
        log.info("removed %s (%d chunks); deleted %s; kept %s", list(plan.names), plan.chunks, deleted, kept)
    return RemovalReport(
        repo=repo,
        removed=plan.names,
        files=plan.files,
        chunks=plan.chunks,
        training_runs=len(plan.run_ids),
        deleted=tuple(deleted),
        kept=tuple(kept + elsewhere),
        dry_run=dry_run,
    )


def sweep_leftovers(*, dry_run: bool = False, min_age_s: float = 600.0) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(deleted, kept) directories under GROUNDING_HOME that belong to no repository now: a clone
    (`checkouts/repo-ID`) or training run (`runs/ID`) whose row is gone, an `eval/` or `retro/` directory
    named for no repository (what a delete killed between its commit and its file deletion left behind,
    and directories of the naming before hashes). Only those untouched for `min_age_s` seconds: an ingest
    or run just starting may not have committed its row yet."""
    settings = get_settings()
    with db.get_engine().connect() as conn:
        if not home.home_is_ours(conn):
            raise SourceConflict(
                f"{settings.home} is not this database's alone ({home.STAMP} there lists "
                f"{len(home.home_databases())} databases; an ingest records each): its files are named by ids that "
                "another database may own, so nothing is swept. Give each deployment a GROUNDING_HOME of its own"
            )
        repos = store.repo_ids_and_names(conn)
        runs = set(store.training_run_ids(conn))
        uses = store.paths_used_elsewhere(conn, ()) + _configured_paths()
    checkouts = {sources.checkout_key(rid) for rid in repos}
    # A live repository's directories, of today's naming and of the old one (its own delete takes those).
    named = {validation.directory_name(name) for name in repos.values()}
    named |= {legacy for name in repos.values() for legacy in _legacy_names(name)}
    found = [d for d in _children(settings.checkouts_dir) if d.name not in checkouts]
    found += [d for d in _children(settings.runs_dir) if not (_is_id(d.name) and int(d.name) in runs)]
    found += [d for kind in ("eval", "retro") for d in _children(settings.home / kind) if d.name not in named]
    now = time.time()
    old = [d for d in found if now - d.lstat().st_mtime >= min_age_s]
    deleted, kept = _delete(old, uses, dry_run=dry_run)
    if deleted and not dry_run:
        log.info("swept %s; kept %s", deleted, kept)
    return tuple(deleted), tuple(kept)


def _is_id_named(directory: Path) -> bool:
    settings = get_settings()
    return directory.parent in (settings.checkouts_dir, settings.runs_dir)


def _is_id(name: str) -> bool:
    return name.isascii() and name.isdigit()  # `²`.isdigit() is true, and int() refuses it


def _configured_paths() -> list[str]:
    """Models the settings name by path (a reranker, an encoder, a generator): in use though no row records them."""
    settings = get_settings()
    named = (settings.reranker, settings.encoder, settings.generator_model)
    return [value for value in named if value and ("/" in value)]


def _children(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if d.is_dir() or d.is_symlink()) if directory.is_dir() else []
