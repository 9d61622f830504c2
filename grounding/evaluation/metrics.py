"""Retrieval evaluation: question datasets (JSONL), the train/held-out split, recall@k and MRR, stored runs.

A question asks for a span of one file; a retrieved chunk answers it when it is in that file and
its lines overlap the span. The split is by file, from a hash of the path, so every question about
a file lands on the same side and no file is both trained on and held out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grounding import db, store
from grounding.errors import DatasetError, InvalidArgument
from grounding.search.retrieve import search

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 20
CUTOFFS = (1, 5, 10)
MODES = ("hybrid", "vector", "lexical")
RERANK_SUFFIX = "+rerank"  # on a result's mode when the cross-encoder reordered its hits


@dataclass(frozen=True)
class Question:
    """A question and where its answer lives: path and 1-based inclusive line span."""

    question: str
    path: str
    start_line: int
    end_line: int
    split: str | None = None  # train or heldout; None in a user's file that does not say
    symbol: str | None = None  # the gold definition's qualified name, when known

    @property
    def effective_split(self) -> str:
        return self.split or split_of(self.path)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of a question set against one repository in one retrieval mode."""

    repo: str  # the repository searched
    mode: str  # hybrid, vector or lexical, with RERANK_SUFFIX when reranked
    k: int
    ranks: tuple[int | None, ...]  # per question: 1-based rank of the first correct hit, None if missed
    metrics: dict[str, float]
    index_version: int | None  # the active index version when the questions were asked
    encoder: str | None

    @property
    def questions(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class EvalRun:
    """A stored evaluation, as the UI and the promotion gate read it."""

    id: int
    repo: str
    dataset: str
    split: str
    mode: str
    index_version: int | None
    encoder: str | None
    questions: int
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: object | None = None  # datetime


# --- the split --------------------------------------------------------------------------------


def split_of(path: str) -> str:
    """`heldout` for about HELDOUT_PERCENT of paths, `train` for the rest; the same on every machine."""
    bucket = int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def select_split(questions: Iterable[Question], split: str) -> list[Question]:
    """The questions of one split, or all of them for `all`."""
    if split not in (*SPLITS, "all"):
        raise InvalidArgument(f"split must be train, heldout or all, not {split!r}")
    return [q for q in questions if split == "all" or q.effective_split == split]


# --- JSONL -------------------------------------------------------------------------------------


def question_from_json(record: object) -> Question:
    """A Question from one decoded JSONL record; ValueError says which field is wrong."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    missing = [f for f in ("question", "path", "start_line", "end_line") if f not in record]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise ValueError("question must be a non-empty string")
    if not isinstance(record["path"], str) or not record["path"]:
        raise ValueError("path must be a non-empty string")
    start, end = record["start_line"], record["end_line"]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (start, end)) or not 1 <= start <= end:
        raise ValueError(f"start_line and end_line must be integers, 1 <= start_line <= end_line, not {start}, {end}")
    split = record.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be train or heldout, not {split!r}")
    symbol = record.get("symbol")
    if symbol is not None and not isinstance(symbol, str):
        raise ValueError("symbol must be a string")
    return Question(record["question"], record["path"], start, end, split, symbol)


def question_to_json(q: Question) -> dict:
    return {k: v for k, v in asdict(q).items() if v is not None}


def parse_jsonl(lines: Iterable[str], *, source: str = "<questions>") -> list[Question]:
    """Questions from JSONL lines; blank lines are skipped, a bad one raises DatasetError with its line number."""
    questions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            questions.append(question_from_json(json.loads(line)))
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise DatasetError(
                f"{source}:{number}: {err}; each line must be a JSON object with question, path, "
                "start_line, end_line (and optionally split: train|heldout)"
            ) from None
    return questions


def load_questions(path: str | Path) -> list[Question]:
    """Read a JSONL question file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"question file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read question file {str(path)!r}: {err}") from None
    return parse_jsonl(text.splitlines(), source=str(path))


def save_questions(path: str | Path, questions: Iterable[Question]) -> Path:
    """Write questions as JSONL (one object a line, UTF-8), creating the directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(question_to_json(q), ensure_ascii=False) + "\n" for q in questions)
    path.write_text(text, encoding="utf-8")
    return path


# --- metrics (pure) ----------------------------------------------------------------------------


def answers(citation, question: Question) -> bool:
    """Whether a citation (path, start_line, end_line) answers the question: same file, overlapping lines."""
    return (
        citation.path == question.path
        and citation.start_line <= question.end_line
        and citation.end_line >= question.start_line
    )


def first_correct(citations: Sequence, question: Question) -> int | None:
    """The 1-based rank of the first citation that answers the question, or None."""
    return next((rank for rank, c in enumerate(citations, 1) if answers(c, question)), None)


def retrieval_metrics(ranks: Sequence[int | None], *, k: int = 10) -> dict[str, float]:
    """recall@1/5/10 (the cut-offs up to k) and MRR@k from the rank of each question's first correct hit."""
    if not ranks:
        raise ValueError("no ranks: metrics need at least one question")
    n = len(ranks)
    hits = [r for r in ranks if r is not None and r <= k]
    out = {f"recall@{c}": sum(r <= c for r in hits) / n for c in CUTOFFS if c <= k}
    out[f"mrr@{k}"] = sum(1 / r for r in hits) / n
    return out


# --- evaluation against a repository ------------------------------------------------------------


def evaluate(
    repo: str,
    questions: Sequence[Question],
    *,
    k: int = 10,
    mode: str = "hybrid",
    index_version: int | None = None,
    rerank: bool | str = False,
) -> EvalResult:
    """Ask every question of `repo` through `retrieve.search` and score the ranked hits.

    The active index version answers, or `index_version` (a candidate before the promotion gate).
    With `rerank` (True: the cross-encoder GROUNDING_RERANKER gives the repository; a path: that
    one), it reorders the hits and the result's mode reads e.g. `hybrid+rerank`; without it no
    reranker is used, whatever the settings say.
    """
    if not questions:
        raise DatasetError("no questions to evaluate")
    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        version = (
            store.active_index_version(conn, repo_id)
            if index_version is None
            else store.index_version(conn, index_version)
        )
    ranks = tuple(
        first_correct(
            [h.citation for h in search(repo, q.question, k=k, mode=mode, index_version=index_version, rerank=rerank)],
            q,
        )
        for q in questions
    )
    return EvalResult(
        repo=repo,
        mode=f"{mode}{RERANK_SUFFIX}" if rerank is not False else mode,
        k=k,
        ranks=ranks,
        metrics=retrieval_metrics(ranks, k=k),
        index_version=version.id if version else None,
        encoder=version.question_encoder if version else None,
    )


def record_run(repo: str, result: EvalResult, *, dataset: str, split: str) -> int:
    """Store an evaluation under `repo` (the repository it measures, which may differ from the one searched)."""
    with db.get_engine().begin() as conn:
        return store.insert_eval_run(
            conn,
            store.repo_id(conn, repo),
            dataset=dataset,
            split=split,
            mode=result.mode,
            index_version_id=result.index_version,
            encoder=result.encoder,
            questions=result.questions,
            metrics=result.metrics,
        )


def eval_runs(repo: str, *, limit: int | None = None) -> list[EvalRun]:
    """The stored evaluations of `repo`, newest first."""
    with db.get_engine().connect() as conn:
        rows = store.eval_runs(conn, store.repo_id(conn, repo), limit=limit)
    return [EvalRun(repo=repo, **row) for row in rows]
