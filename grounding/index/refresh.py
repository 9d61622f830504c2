"""Keep ingested repositories current: re-ingest a repository when its commit has moved, else say so.

Derived eval indexes are not refreshed: `grounding eval` rebuilds them from their repository.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from grounding import db, store, validation
from grounding.errors import InvalidArgument, RepoNotFound
from grounding.index import sources
from grounding.index.ingest import ingest, not_as_queued
from grounding.records import IngestReport


@dataclass(frozen=True)
class RefreshOutcome:
    repo: str
    action: str  # "ingested", "unchanged" or "deleted" (during the refresh: nothing ingested)
    commit_before: str | None
    commit_after: str | None
    reason: str
    report: IngestReport | None = None


@dataclass(frozen=True)
class RefreshPlan:
    """What a refresh of `repo` would do, found without ingesting: its source, and the commit before and now."""

    repo: str
    source: str
    ref: str | None
    commit_before: str | None
    commit_now: str | None  # None: not a git checkout, so there is no commit to compare and it is re-read
    repo_id: int | None = None  # the repository planned for, and the deletes' mark then (store.deletion_mark):
    deletion_mark: int | None = None  # one deleted since the plan is not registered again by its ingest

    @property
    def moved(self) -> bool:
        return self.commit_now is None or self.commit_now != self.commit_before

    def unchanged(self) -> RefreshOutcome:
        return RefreshOutcome(
            self.repo, "unchanged", self.commit_before, self.commit_now, f"still at {self.commit_now[:12]}"
        )

    def deleted(self) -> RefreshOutcome:
        return RefreshOutcome(
            self.repo, "deleted", self.commit_before, None, "deleted during the refresh: not ingested"
        )

    def deleted_since(self) -> bool:
        """Whether the repository was deleted (or deleted and registered anew) after this plan was made."""
        with db.get_engine().connect() as conn:
            record = store.repo_record(conn, self.repo)
            return record is None or not_as_queued(
                conn, self.repo, record, repo_id=self.repo_id, deletion_mark=self.deletion_mark
            )

    def ingested(self, commit: str | None, files_changed: int | None, *, by: str = "") -> RefreshOutcome:
        changed = "" if files_changed is None else f", {files_changed} files changed"
        if self.commit_now is None:
            reason = f"no commit to compare: re-read{changed}"
        else:
            reason = f"{(self.commit_before or 'nothing')[:12]} -> {(commit or self.commit_now)[:12]}{changed}"
        return RefreshOutcome(self.repo, "ingested", self.commit_before, commit, reason + by)


def plan_refresh(repo: str) -> RefreshPlan:
    """Whether `repo`'s source moved since its last snapshot (a `git ls-remote` or `rev-parse`, no ingest)."""
    repo = validation.repo_name(repo, derived_ok=True)
    with db.get_engine().connect() as conn:
        mark = store.deletion_mark(conn)  # first: a delete that commits after this read is past the mark
        record = store.repo_record(conn, repo)
        if record is None:
            raise RepoNotFound(repo, store.repo_names(conn))
        before = store.repo_source(conn, repo)[2]  # only whether to ingest: source, ref and id are the record's
        source, ref = record.source, record.ref
        parent = store.derived_parent(conn, repo)
    if parent is not None:
        raise InvalidArgument(
            f"{repo!r} is an eval index derived from {parent!r}; `grounding eval {parent}` rebuilds it"
        )
    if not sources.is_git_url(source):
        ref = None  # a local checkout is read as it is; the stored ref only records its branch
    return RefreshPlan(repo, source, ref, before, sources.current_commit(source, ref), record.id, mark)


def refresh(repo: str) -> RefreshOutcome:
    """Re-ingest `repo` (incrementally) if its source's commit moved; a directory outside git is always re-read.
    A repository deleted after the plan is not registered again: its outcome is `deleted`."""
    plan = plan_refresh(repo)
    if not plan.moved:
        return plan.unchanged()
    try:
        report = ingest(
            plan.source, name=plan.repo, ref=plan.ref, repo_id=plan.repo_id, deletion_mark=plan.deletion_mark
        )
    except RepoNotFound:
        if plan.deleted_since():  # an administrator's delete came first: nothing to refresh, nothing failed
            return plan.deleted()
        raise
    outcome = plan.ingested(report.commit, report.files_changed)
    return dataclasses.replace(outcome, report=report)


def repositories() -> list[str]:
    """Every registered repository except the derived eval indexes: what scheduled jobs walk."""
    with db.get_engine().connect() as conn:
        return store.repo_names(conn, derived=False)
