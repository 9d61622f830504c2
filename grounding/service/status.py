"""What the copilot UI shows, as frozen views: repositories and who may see them, snapshots, index versions,
skipped files, file roles, training runs with their per-step metrics, evaluations, and the tidy rows its charts plot.

Everything here reads through `store`; nothing imports Streamlit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grounding import db, store
from grounding.records import SkippedFile

if TYPE_CHECKING:
    from grounding.evaluation.metrics import EvalRun
    from grounding.training.runs import TrainingRun

REALM_KINDS = ("realm",)
RETRO_KINDS = ("retro", "retrofit")
RERANKER_KINDS = ("reranker",)
RERANKER_ROWS = {"hybrid": "hybrid", "hybrid+current": "promoted reranker", "hybrid+candidate": "new reranker"}


def age_text(seconds: float | None) -> str:
    """A short human age: `just now`, `12 min`, `5 h`, `3 d`; `never` for None."""
    if seconds is None:
        return "never"
    if seconds < 60:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return "just now"


def _age(at: dt.datetime | None) -> float | None:
    return None if at is None else max(0.0, (dt.datetime.now(dt.timezone.utc) - at).total_seconds())


# --- repositories ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoStatus:
    """A repository as the UI lists it: what queries see now, and how the latest run went."""

    name: str
    source: str
    ref: str | None
    snapshot_id: int | None  # the current (last complete) snapshot
    commit: str | None
    snapshot_finished_at: dt.datetime | None
    files: int
    chunks: int
    index_version: int | None  # the active one
    encoder: str | None
    query_encoder: str | None
    last_status: str | None  # of the newest snapshot: running, complete or failed
    last_error: str | None
    last_started_at: dt.datetime | None
    derived_from: str | None = None  # the repository an eval index was derived from (the catalogue's mark)

    @property
    def derived(self) -> bool:
        return self.derived_from is not None

    @property
    def age_seconds(self) -> float | None:
        """Freshness: seconds since the last complete snapshot finished; None before the first."""
        return _age(self.snapshot_finished_at)

    @property
    def freshness(self) -> str:
        return age_text(self.age_seconds)


@dataclass(frozen=True)
class RepoScope:
    """The repositories one UI user may see, and a line that says on what grounds."""

    user: str | None  # None: local trusted mode, every repository
    repos: tuple[RepoStatus, ...]
    note: str

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.repos]


def repositories(*, include_derived: bool = False) -> list[RepoStatus]:
    """Every ingested repository by name; those derived for evaluation only when asked for."""
    with db.get_engine().connect() as conn:
        rows = store.repo_statuses(conn)
    repos = [RepoStatus(**row) for row in rows]
    return repos if include_derived else [r for r in repos if not r.derived]


def repo_scope(user: str | None, *, include_derived: bool = False) -> RepoScope:
    """What `user` may see (grounding.access.allowed_repos); without a user, everything (local trusted mode)."""
    from grounding import validation
    from grounding.access import allowed_repos

    user = validation.user(user)  # "" or "  " is an error, never the trusted caller
    repos = repositories(include_derived=include_derived)
    if user is None:
        return RepoScope(None, tuple(repos), "Local trusted mode: no user is set, every repository is shown.")
    allowed = set(allowed_repos(user))
    visible = tuple(r for r in repos if r.name in allowed)
    return RepoScope(user, visible, f"Signed in as {user!r}: {len(visible)} repositories you may read.")


# --- snapshots, index versions, skipped files --------------------------------------------------------


@dataclass(frozen=True)
class SnapshotView:
    """One ingest of a repository: its outcome, commit, timing and what it counted."""

    id: int
    status: str  # running, complete, failed
    commit: str | None
    ref: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    stats: dict = field(default_factory=dict)  # files_seen, files_changed, chunks_added, ..., seconds per stage
    error: str | None = None
    skipped: int = 0
    files_written: int = 0  # rows this snapshot wrote (changed files): a running ingest's progress

    @property
    def seconds(self) -> float | None:
        return None if self.finished_at is None else (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class IndexVersionView:
    """An index version: the encoders behind its vectors, its lifecycle and how many vectors it holds."""

    id: int
    encoder: str
    query_encoder: str | None
    dim: int
    status: str  # building, active, candidate, shadow, retired, failed
    vectors: int
    created_at: dt.datetime
    activated_at: dt.datetime | None
    retired_at: dt.datetime | None
    note: str | None


@dataclass(frozen=True)
class SkippedFiles:
    """The files a snapshot did not index: counts per reason and the files themselves (up to a limit)."""

    snapshot_id: int | None
    by_reason: dict[str, int]
    files: tuple[SkippedFile, ...]

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def snapshots(repo: str, *, limit: int | None = 50) -> list[SnapshotView]:
    """The repository's snapshots, newest first; RepoNotFound if it was never ingested."""
    with db.get_engine().connect() as conn:
        rows = store.snapshot_history(conn, store.repo_id(conn, repo), limit=limit)
    return [SnapshotView(**row) for row in rows]


def latest_snapshot(repo: str) -> SnapshotView | None:
    """The newest snapshot whatever its status (a running ingest's), or None before the first one."""
    with db.get_engine().connect() as conn:
        row = store.latest_snapshot(conn, repo)
    return SnapshotView(**row) if row else None


def index_versions(repo: str) -> list[IndexVersionView]:
    """Every index version of the repository, oldest first."""
    with db.get_engine().connect() as conn:
        rows = store.index_versions(conn, store.repo_id(conn, repo))
    return [IndexVersionView(**row) for row in rows]


def skipped_files(repo: str, *, snapshot_id: int | None = None, limit: int | None = 1000) -> SkippedFiles:
    """What the current snapshot (or `snapshot_id`) skipped, and why."""
    with db.get_engine().connect() as conn:
        if snapshot_id is None:
            snapshot_id, _ = store.current_snapshot(conn, store.repo_id(conn, repo))
        if snapshot_id is None:
            return SkippedFiles(None, {}, ())
        reasons = store.skipped_reasons(conn, snapshot_id)
        files = store.skipped_files_of(conn, snapshot_id, limit=limit)
    return SkippedFiles(snapshot_id, reasons, tuple(SkippedFile(path, reason) for path, reason in files))


@dataclass(frozen=True)
class FileRoles:
    """What each file of the current snapshot is for (grounding.roles), and how many files of each role."""

    by_role: dict[str, int]
    files: tuple[tuple[str, str, str, int], ...]  # path, role, language, chunks


def file_roles(repo: str, *, role: str | None = None, limit: int = 1000) -> FileRoles:
    """Files per role, and the first `limit` files (of `role`, if given) by path."""
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        counts = store.role_counts(conn, repo_id)
        files = store.visible_roles(conn, repo_id, role=role, limit=limit)
    return FileRoles(counts, tuple(files))


# --- training and evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class StepMetrics:
    stage: str  # ict, pretrain, finetune (REALM); retro, baseline, retrofit, eval (RETRO)
    step: int
    metrics: dict


@dataclass(frozen=True)
class RunHistory:
    """A stored training run with its per-step metrics."""

    run: TrainingRun
    steps: tuple[StepMetrics, ...]


def training_history(
    repo: str | None = None,
    *,
    kinds: Sequence[str] = REALM_KINDS + RETRO_KINDS + RERANKER_KINDS,
    limit: int | None = 20,
) -> list[RunHistory]:
    """The newest runs of the given kinds (of one repository or all), each with its per-step metrics."""
    from grounding.training.runs import mark_dead_runs, training_metrics, training_runs

    mark_dead_runs()  # of any host, a run whose heartbeat stopped: shown failed, not running for ever
    runs = [r for r in training_runs(repo, limit=None) if r.kind in kinds][:limit]
    return [
        RunHistory(run, tuple(StepMetrics(m["stage"], m["step"], m["metrics"]) for m in training_metrics(run.id)))
        for run in runs
    ]


def eval_history(repo: str, *, limit: int | None = 100) -> list[EvalRun]:
    """Stored evaluation runs of `repo`, newest first."""
    from grounding.evaluation.metrics import eval_runs

    return eval_runs(repo, limit=limit)


# --- tidy rows for charts and tables (pure) ------------------------------------------------------------


def loss_rows(histories: Iterable[RunHistory], *, metric: str = "loss") -> list[dict]:
    """One row per logged step that has `metric`: run, kind, stage, step, value, and a series name."""
    rows = []
    for h in histories:
        for s in h.steps:
            value = s.metrics.get(metric)
            if value is not None:
                rows.append(
                    {
                        "run": h.run.id,
                        "kind": h.run.kind,
                        "stage": s.stage,
                        "step": s.step,
                        metric: value,
                        "series": f"run {h.run.id} {s.stage}",
                    }
                )
    return rows


def _retrieval_setting(name: str) -> str:
    if name in ("baseline", "base_no_retrieval"):
        return "baseline"
    return "off" if "no_retrieval" in name else "on"


def bits_per_byte_rows(runs: Iterable[TrainingRun]) -> list[dict]:
    """Held-out bits per byte of RETRO runs: retrieval on, off, and the baseline, on all or low-overlap text."""
    rows = []
    for run in runs:
        if run.kind not in RETRO_KINDS:
            continue
        for name, value in (run.metrics.get("bits_per_byte") or {}).items():
            low = name.endswith("_low_overlap")
            rows.append(
                {
                    "run": run.id,
                    "kind": run.kind,
                    "setting": name,
                    "retrieval": _retrieval_setting(name.removesuffix("_low_overlap")),
                    "subset": "low overlap" if low else "all",
                    "bits_per_byte": value,
                }
            )
    return rows


def heldout_mrr_rows(runs: Iterable[TrainingRun]) -> list[dict]:
    """Held-out MRR of each REALM run's active and candidate index versions, per retrieval mode."""
    rows = []
    for run in runs:
        if run.kind not in REALM_KINDS:
            continue
        for name, figures in (run.metrics.get("heldout") or {}).items():
            version, _, mode = name.partition("_")
            mrr = next((k for k in figures if k.startswith("mrr@")), None)
            if mrr is not None:
                rows.append(
                    {
                        "run": run.id,
                        "version": version,
                        "mode": mode,
                        "metric": mrr,
                        "mrr": figures[mrr],
                        "decision": run.decision or run.status,
                    }
                )
    return rows


def reranker_mrr_rows(runs: Iterable[TrainingRun]) -> list[dict]:
    """Held-out MRR of each reranker run: hybrid alone, with the reranker promoted before, with the new one."""
    rows = []
    for run in runs:
        if run.kind not in RERANKER_KINDS:
            continue
        for name, figures in (run.metrics.get("heldout") or {}).items():
            mrr = next((k for k in figures if k.startswith("mrr@")), None)
            if mrr is not None and name in RERANKER_ROWS:
                rows.append(
                    {
                        "run": run.id,
                        "ranking": RERANKER_ROWS[name],
                        "metric": mrr,
                        "mrr": figures[mrr],
                        "decision": run.decision or run.status,
                    }
                )
    return rows


def eval_rows(evals: Iterable[EvalRun]) -> list[dict]:
    """Stored evaluations flattened for a table: one column per metric."""
    return [
        {
            "id": e.id,
            "when": e.created_at,
            "dataset": e.dataset,
            "split": e.split,
            "mode": e.mode,
            "index version": e.index_version,
            "encoder": e.encoder,
            "questions": e.questions,
            **e.metrics,
        }
        for e in evals
    ]
