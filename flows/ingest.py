"""The `ingest-repo` flow: ingest a path or git URL into Postgres/pgvector, and publish what it did."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from grounding.errors import DatabaseUnavailable, SourceUnreachable
from grounding.index.ingest import Progress, ingest
from grounding.records import IngestReport

IO_ERRORS = (DatabaseUnavailable, SourceUnreachable, ConnectionError, TimeoutError)

# A listener for the progress of flows run in this process (the copilot's ingest page). A context
# variable, not a flow parameter: a callable cannot travel to the Prefect API or into a cache key.
_progress_listener: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("ingest_progress", default=None)


@contextlib.contextmanager
def reporting_progress(listener: Progress) -> Iterator[None]:
    """Call `listener(stage, done, total)` as `ingest_repo` flows run in this context make progress."""
    token = _progress_listener.set(listener)
    try:
        yield
    finally:
        _progress_listener.reset(token)


def retry_on_io(task, task_run, state) -> bool:
    """Retry when the database or a git remote failed to answer; a bad path or a bug fails at once."""
    try:
        state.result()
    except IO_ERRORS:
        return True
    except Exception:
        return False
    return False


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)
def ingest_task(
    source: str,
    name: str | None,
    ref: str | None,
    user: str | None = None,
    replace_source: bool = False,
    wait: bool = True,
) -> IngestReport:
    logger = get_run_logger()
    listener = _progress_listener.get()

    def progress(stage: str, done: int, total: int) -> None:
        logger.info("%s: %d/%d", stage, done, total)
        if listener is not None:
            listener(stage, done, total)

    return ingest(source, name=name, ref=ref, progress=progress, user=user, replace_source=replace_source, wait=wait)


@task
def publish_report(report: IngestReport) -> None:
    """A Prefect artifact: files seen and skipped (with reasons), chunks added/removed/unchanged, time per stage."""
    reasons = report.skipped_by_reason()
    lines = [
        f"# Ingest of `{report.repo}`, snapshot {report.snapshot_id}"
        + (f" at `{report.commit[:12]}`" if report.commit else ""),
        "",
        "| files | count |",
        "|---|---|",
        f"| seen | {report.files_seen} |",
        f"| changed | {report.files_changed} |",
        f"| unchanged | {report.files_unchanged} |",
        f"| deleted | {report.files_deleted} |",
        f"| skipped | {len(report.skipped)} |",
        "",
        "| chunks | count |",
        "|---|---|",
        f"| added | {report.chunks_added} |",
        f"| removed | {report.chunks_removed} |",
        f"| unchanged | {report.chunks_unchanged} |",
        f"| embedded | {report.embeddings_computed} |",
        f"| vectors reused | {report.embeddings_reused} |",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {stage} | {secs:.2f} |" for stage, secs in report.seconds.items()),
    ]
    if reasons:
        lines += [
            "",
            "| skipped because | files |",
            "|---|---|",
            *(f"| {r} | {n} |" for r, n in sorted(reasons.items())),
        ]
        lines += ["", "First skipped files:", *(f"- `{s.path}`: {s.reason}" for s in report.skipped[:50])]
    if report.non_utf8:
        lines += ["", "Not UTF-8 (decoded with replacement): " + ", ".join(f"`{p}`" for p in report.non_utf8[:50])]
    key = "ingest-" + "".join(ch if ch.isalnum() else "-" for ch in report.repo.lower())
    create_markdown_artifact("\n".join(lines), key=key, description=f"ingest of {report.repo}")


@task
def tune_fusion_task(repo: str, *, only_if_untuned: bool) -> dict | None:
    """Choose the active index version's fusion weights on the repository's own questions (grounding.evaluation.tuning).

    Skipped when the version already has them (`only_if_untuned`); a repository with no question to
    harvest keeps the defaults. Tuning never fails the ingest or reindex it follows."""
    from grounding import db, store
    from grounding.errors import DatasetError
    from grounding.evaluation.tuning import keep_defaults, tune_fusion

    logger = get_run_logger()
    try:
        if only_if_untuned:
            with db.get_engine().connect() as conn:
                version = store.active_index_version(conn, store.repo_id(conn, repo))
            if version is None or version.fusion_weights is not None:
                return None
        choice = tune_fusion(repo)
    except DatasetError as err:
        logger.info("fusion weights of %s stay the defaults: %s", repo, err)
        keep_defaults(repo, str(err)[:300])
        return None
    except Exception as err:  # noqa: BLE001 - tuning never fails the ingest or reindex it follows
        logger.warning("could not tune the fusion weights of %s: %s: %s", repo, type(err).__name__, err)
        return None
    logger.info("%s", choice.describe())
    return {"weights": str(choice.weights), "questions": choice.questions, "stored": choice.stored}


@flow(name="ingest-repo", log_prints=True)
def ingest_repo(
    source: str,
    name: str | None = None,
    ref: str | None = None,
    user: str | None = None,
    replace_source: bool = False,
    tune_fusion: bool = True,
    wait: bool = True,
) -> dict:
    """Ingest `source` (a directory or git URL) as repository `name` (default: its last path segment).

    With `user` (the copilot passes its user), the repository must be granted to them and is only
    re-ingested from its registered source (grounding.index.ingest.ingest); `replace_source` re-points an
    existing repository at `source`, for a trusted caller only. With `tune_fusion`, an index version
    that has no fusion weights of its own yet gets them, chosen on the repository's harvested questions.
    Without `wait`, a run that finds another ingest of the repository under way fails at once (IngestBusy)
    instead of queueing behind it (refresh-repos asks that: the next refresh picks the repository up).
    """
    report = ingest_task(source, name, ref, user, replace_source, wait)
    publish_report(report)
    summary = dataclasses.asdict(report)
    summary["skipped"] = report.skipped_by_reason()
    if tune_fusion:
        summary["fusion"] = tune_fusion_task(report.repo, only_if_untuned=True)
    return summary
