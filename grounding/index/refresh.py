"""Keep ingested repositories current: re-ingest a repository when its commit has moved, else say so.

Derived eval indexes are not refreshed: `grounding eval` rebuilds them from their repository.
"""

from __future__ import annotations

from dataclasses import dataclass

from grounding import db, store, validation
from grounding.errors import InvalidArgument
from grounding.index import sources
from grounding.index.ingest import ingest
from grounding.records import IngestReport


@dataclass(frozen=True)
class RefreshOutcome:
    repo: str
    action: str  # "ingested" or "unchanged"
    commit_before: str | None
    commit_after: str | None
    reason: str
    report: IngestReport | None = None


def refresh(repo: str) -> RefreshOutcome:
    """Re-ingest `repo` (incrementally) if its source's commit moved; a directory outside git is always re-read."""
    repo = validation.repo_name(repo, derived_ok=True)
    with db.get_engine().connect() as conn:
        source, ref, before = store.repo_source(conn, repo)
        parent = store.derived_parent(conn, repo)
    if parent is not None:
        raise InvalidArgument(
            f"{repo!r} is an eval index derived from {parent!r}; `grounding eval {parent}` rebuilds it"
        )
    if not sources.is_git_url(source):
        ref = None  # a local checkout is read as it is; the stored ref only records its branch
    now = sources.current_commit(source, ref)
    if now is not None and now == before:
        return RefreshOutcome(repo, "unchanged", before, now, f"still at {now[:12]}")
    report = ingest(source, name=repo, ref=ref)
    if now is None:
        reason = f"no commit to compare: re-read, {report.files_changed} files changed"
    else:
        reason = f"{(before or 'nothing')[:12]} -> {(report.commit or now)[:12]}, {report.files_changed} files changed"
    return RefreshOutcome(repo, "ingested", before, report.commit, reason, report)


def repositories() -> list[str]:
    """Every registered repository except the derived eval indexes: what scheduled jobs walk."""
    with db.get_engine().connect() as conn:
        return store.repo_names(conn, derived=False)
