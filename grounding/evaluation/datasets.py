"""Question datasets: a question and the span of one file that answers it, the train/held-out split, JSONL.

The split is by file, from a hash of the path (grounding.records.split_of, which the RETRO database
also reads), so every question about a file lands on the same side and no file is both trained on
and held out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from grounding.errors import DatasetError, InvalidArgument
from grounding.records import HELDOUT_PERCENT, SPLITS, split_of

__all__ = [
    "HELDOUT_PERCENT",
    "SPLITS",
    "Question",
    "load_questions",
    "parse_jsonl",
    "question_from_json",
    "question_to_json",
    "save_questions",
    "select_split",
    "split_of",
]


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
