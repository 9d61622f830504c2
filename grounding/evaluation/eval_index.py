"""Evaluation runs end to end: harvest questions, build the eval index they need, ask, score and store.

A docstring's first sentence is a trivial question about a function that still holds the
docstring, so harvested questions are asked of an eval index: a copy of the repository with the
harvested docstrings cut out, ingested as the derived repository `REPO~eval-<harvester>` with
REPO's active encoder. It is re-ingested incrementally, so a rerun embeds only what changed in REPO.
A commit subject asks for files as they were before the commit, so commit questions
(grounding.evaluation.harvest_git) are asked of `REPO~eval-commits`: the repository's tracked files at the parent
of the oldest harvested commit, read from git. A user's own question file is asked of REPO as it is.

A harvester takes the repository's checkout, opened under its lock, and returns the questions and
the files of the tree they are asked of: the docstring harvester reads the files as they are, the
commit harvester reads history.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from grounding import db, store, validation
from grounding.config import get_settings
from grounding.errors import EncoderNotFound, InvalidArgument, NotIndexed, RepoNotFound
from grounding.evaluation.datasets import Question, load_questions, save_questions, select_split
from grounding.evaluation.harvest import harvest_docstrings
from grounding.evaluation.harvest_git import harvest_commits
from grounding.evaluation.metrics import MODES, DatasetError, EvalResult, evaluate, record_run
from grounding.index import sources
from grounding.index.embed import load_embedder
from grounding.index.ingest import ingest
from grounding.index.reindex import reindex
from grounding.records import IndexVersion, IngestReport

log = logging.getLogger(__name__)

DERIVED_MARK = "~eval-"


@dataclass(frozen=True)
class EvalIndex:
    """A derived repository built for harvested questions, and those questions."""

    repo: str  # the repository measured
    name: str  # the derived repository searched: REPO~eval-<harvester>
    harvester: str
    questions: tuple[Question, ...]
    ingest: IngestReport


@dataclass(frozen=True)
class EvalReport:
    """What `run_eval` did: which questions, asked of which repository, with what results."""

    repo: str
    searched: str
    dataset: str  # the harvester's name or the question file's path, as stored
    split: str
    total: int  # questions in the dataset, every split
    results: tuple[EvalResult, ...]  # one per mode, or two (without and with the reranker)
    run_ids: tuple[int, ...]
    saved: Path | None = None  # where harvested questions were written
    eval_index: EvalIndex | None = None


def eval_index_name(repo: str, harvester: str) -> str:
    return f"{repo}{DERIVED_MARK}{harvester}"


def eval_dir(repo: str) -> Path:
    """Where a repository's eval datasets and eval trees live: GROUNDING_HOME/eval/, a directory of its own."""
    return get_settings().eval_dir(repo)


def _harvest_docstrings(checkout: sources.Checkout) -> tuple[list[Question], dict[str, bytes]]:
    settings = get_settings()
    listing = sources.list_files(checkout, max_bytes=settings.max_file_bytes, max_line_length=settings.max_line_length)
    return harvest_docstrings({f.path: f.data for f in listing.files})


def _harvest_commits(checkout: sources.Checkout) -> tuple[list[Question], dict[str, bytes]]:
    if not checkout.is_git or checkout.commit is None:
        raise DatasetError(
            f"{checkout.source} is not a git checkout with commits: the commits harvester needs its history; "
            "use --harvest docstrings or bring a question file with --dataset"
        )
    settings = get_settings()
    harvest = harvest_commits(
        checkout.root,
        commit=checkout.commit,
        max_bytes=settings.max_file_bytes,
        max_line_length=settings.max_line_length,
    )
    log.info(
        "%d questions from %d of the last %d commits, asked at %s",
        len(harvest.questions),
        len(harvest.commits),
        harvest.walked,
        harvest.base,
    )
    return list(harvest.questions), harvest.files


Harvester = Callable[[sources.Checkout], tuple[list[Question], dict[str, bytes]]]
HARVESTERS: dict[str, Harvester] = {"docstrings": _harvest_docstrings, "commits": _harvest_commits}


def _harvest(repo: str, harvester: Harvester) -> tuple[list[Question], dict[str, bytes], IndexVersion]:
    """Harvest an ingested repository as it is now, under its lock: questions, the eval tree, its active version."""
    settings = get_settings()
    engine = db.get_engine()
    with store.repo_lock(engine, repo):
        with engine.begin() as conn:
            source, ref, commit = store.repo_source(conn, repo)
            repo_id = store.repo_id(conn, repo)
            version = store.active_index_version(conn, repo_id)
            store.fail_interrupted(conn, repo_id)  # a dead ingest's shard must not move the checkout under us
        if version is None:
            raise NotIndexed(f"repository {repo!r} has no active index version; ingest it first")
        # Evaluating must not fetch: a git URL is read from the checkout the last ingest left.
        checkout = sources.reopen(
            source, checkouts=settings.checkouts_dir, name=sources.checkout_key(repo_id), commit=commit, ref=ref
        )
        questions, tree = harvester(checkout)
    return questions, tree, version


def _write_tree(root: Path, files: Mapping[str, bytes]) -> None:
    """Replace the directory `root` with exactly `files`, written beside it first."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for path, data in files.items():
            segments = sources.plain_segments(path)
            if segments is None:  # never outside the staging directory, never a .git of its own
                raise DatasetError(f"refusing to write {path!r}: not a plain path inside the eval tree")
            target = staging.joinpath(*segments)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_eval_index(repo: str, *, harvester: str = "docstrings") -> EvalIndex:
    """Harvest `repo`'s questions and (re-)ingest the tree they are asked of as `REPO~eval-<harvester>`."""
    if harvester not in HARVESTERS:
        raise InvalidArgument(f"harvester must be one of {', '.join(HARVESTERS)}, not {harvester!r}")
    repo = validation.repo_name(repo)
    questions, files, version = _harvest(repo, HARVESTERS[harvester])
    encoder = version.encoder
    if not questions:
        raise DatasetError(
            f"repository {repo!r} has no question to harvest with {harvester!r} "
            "(no documented Python function); bring a question file with --dataset"
        )
    name = eval_index_name(repo, harvester)
    tree = eval_dir(repo) / f"{harvester}-tree"
    engine = db.get_engine()
    with store.repo_lock(engine, repo):  # a delete of `repo` (which takes it) comes before or after, not during
        with engine.connect() as conn:
            store.repo_id(conn, repo)  # deleted since the harvest: write no copy of its code
        _write_tree(tree, files)
    with db.get_engine().connect() as conn:
        try:
            derived = store.active_index_version(conn, store.repo_id(conn, name))
        except RepoNotFound:
            derived = None
    if derived is not None and derived.encoder != encoder:
        log.info("%s was embedded with %s; reindexing with %s", name, derived.encoder, encoder)
        reindex(name, encoder=encoder, query_encoder=version.query_encoder, grace_seconds=0)
    # The tree's place is grounding's to choose (it moved once, to a directory named by a hash of the name):
    # an eval index registered from an older place reads this one from now on.
    report = ingest(str(tree), name=name, embedder=load_embedder(encoder), derived_from=repo, replace_source=True)
    with db.get_engine().connect() as conn:
        derived = store.active_index_version(conn, store.repo_id(conn, name))
    if derived.query_encoder != version.query_encoder:
        # REPO serves a trained query tower over the same documents: the eval index must ask with it too.
        reindex(name, encoder=encoder, query_encoder=version.query_encoder, copy_from=derived.id, grace_seconds=0)
    return EvalIndex(repo, name, harvester, tuple(questions), report)


def training_splits(repo: str, *, harvester: str = "docstrings") -> tuple[EvalIndex, list[Question], list[Question]]:
    """The eval index and its train and held-out questions, for a job that trains on one and gates on the other."""
    index = build_eval_index(repo, harvester=harvester)
    train, heldout = select_split(index.questions, "train"), select_split(index.questions, "heldout")
    if not train or not heldout:
        raise DatasetError(
            f"{repo!r} gives {len(train)} train and {len(heldout)} held-out questions with {harvester!r}; "
            "both splits are needed to train and to gate"
        )
    return index, train, heldout


def run_eval(
    repo: str,
    *,
    dataset: str | Path | None = None,
    harvester: str = "docstrings",
    split: str | None = None,
    modes: Sequence[str] = ("hybrid",),
    k: int = 10,
    save: str | Path | None = None,
    rerank: bool = False,
) -> EvalReport:
    """Evaluate `repo`'s retrieval on a question file, or on harvested questions; store one run per mode.

    A question file is asked of `repo` itself, every split by default. Harvested questions are asked
    of the eval index, held-out split by default, and saved as JSONL (GROUNDING_HOME/eval/REPO-HASH/, eval_dir).
    With `rerank`, each mode is evaluated twice, without and then with the cross-encoder that
    GROUNDING_RERANKER gives `repo` (its promoted one by default), stored as e.g. `hybrid` and `hybrid+rerank`.
    """
    repo = validation.repo_name(repo)
    for mode in modes:
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    k = validation.count(k, "k")
    if harvester not in HARVESTERS:
        raise InvalidArgument(f"harvester must be one of {', '.join(HARVESTERS)}, not {harvester!r}")
    reranker: str | bool = False
    with db.get_engine().connect() as conn:
        store.repo_id(conn, repo)  # RepoNotFound before any harvesting or reading of files
        if rerank:
            from grounding.search.retrieve import configured_reranker

            reranker = configured_reranker(conn, repo, get_settings().reranker) or False
    if rerank and not reranker:
        raise EncoderNotFound(
            f"evaluating {repo!r} with a reranker needs one: train it with `grounding train-reranker {repo}`, "
            "or set GROUNDING_RERANKER to a local cross-encoder directory"
        )
    index = saved = None
    if dataset is not None:
        questions = load_questions(dataset)
        searched, name, split = repo, str(Path(dataset).resolve()), split or "all"
    else:
        index = build_eval_index(repo, harvester=harvester)
        questions = list(index.questions)
        saved = save_questions(save or eval_dir(repo) / f"{harvester}.jsonl", questions)
        searched, name, split = index.name, harvester, split or "heldout"
    chosen = select_split(questions, split)
    if not chosen:
        raise DatasetError(
            f"the {split} split of {name} holds no question ({len(questions)} in all); choose another with --split"
        )
    results = tuple(
        evaluate(searched, chosen, k=k, mode=mode, rerank=reranked)
        for mode in modes
        for reranked in ((False, reranker) if reranker else (False,))
    )
    run_ids = tuple(record_run(repo, r, dataset=name, split=split) for r in results)
    return EvalReport(repo, searched, name, split, len(questions), results, run_ids, saved, index)
