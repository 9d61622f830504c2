"""Retrieval quality on a real source tree, CodeSearchNet-style: docstring first sentences ask for their functions.

An installed package is copied to a temporary directory; a seeded sample of its documented functions
loses its docstrings (the first sentence of each becomes a question, the function its gold answer);
the copy is ingested once with the real encoder, and every question is searched in lexical, vector
and hybrid mode. A hit is correct when it is in the gold file and its lines overlap the gold
function's; the strict variant also wants the hit's symbol to end in the function's name.

    python bench/retrieval.py --package click --questions 150 --json click.json
"""

from __future__ import annotations

import argparse
import ast
import atexit
import inspect
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SITE_PACKAGES = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
MODES = ("lexical", "vector", "hybrid")
K = 10
MIN_QUESTION_WORDS = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class Question:
    text: str
    path: str  # relative to the copied package root, as the ingest stores it
    name: str  # the function's own name, compared with the last part of a hit's symbol
    start_line: int  # of the function after its docstring was removed, decorators included
    end_line: int


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function and method of a module, nested ones too, in source order."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        yield from functions(node)


def first_sentence(docstring: str) -> str:
    paragraph = " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())
    return _SENTENCE_END.split(paragraph, maxsplit=1)[0]


def removable_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[bytes]) -> ast.Expr | None:
    """The function's docstring statement, if it stands on lines of its own (so it can be cut whole)."""
    doc = node.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
        return None
    alone_before = not lines[doc.lineno - 1][: doc.col_offset].strip()
    alone_after = not lines[doc.end_lineno - 1][doc.end_col_offset :].strip()
    next_line = node.body[1].lineno if len(node.body) > 1 else None
    return doc if alone_before and alone_after and next_line != doc.end_lineno else None


def candidates(root: Path) -> list[tuple[str, int, str]]:
    """(path, index of the function in its file, question) for every function a question can be asked of."""
    found = []
    for file in sorted(root.rglob("*.py")):
        data = file.read_bytes()
        lines = data.splitlines(keepends=True)
        for index, node in enumerate(functions(ast.parse(data))):
            doc = removable_docstring(node, lines)
            if doc is not None:
                question = first_sentence(doc.value.value)
                if len(question.split()) >= MIN_QUESTION_WORDS:
                    found.append((file.relative_to(root).as_posix(), index, question))
    return found


def strip_docstrings(root: Path, picked: list[tuple[str, int, str]]) -> list[Question]:
    """Cut the picked functions' docstrings out of their files (bottom up), then read the gold spans back."""
    by_path: dict[str, dict[int, str]] = {}
    for path, index, question in picked:
        by_path.setdefault(path, {})[index] = question
    questions = []
    for path, wanted in by_path.items():
        file = root / path
        lines = file.read_bytes().splitlines(keepends=True)
        nodes = list(functions(ast.parse(b"".join(lines))))
        for index in sorted(wanted, key=lambda i: -nodes[i].body[0].lineno):
            node, doc = nodes[index], nodes[index].body[0]
            indent = lines[doc.lineno - 1][: doc.col_offset]
            body = [] if len(node.body) > 1 else [indent + b"pass\n"]
            lines[doc.lineno - 1 : doc.end_lineno] = body
        data = b"".join(lines)
        file.write_bytes(data)
        rewritten = list(functions(ast.parse(data)))
        for index, question in wanted.items():
            node = rewritten[index]
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            questions.append(Question(question, path, node.name, start, node.end_lineno))
    return sorted(questions, key=lambda q: (q.path, q.start_line))


def first_correct(hits, question: Question, *, strict: bool) -> int | None:
    """The 1-based rank of the first hit on the gold function, or None."""
    for rank, hit in enumerate(hits, 1):
        c = hit.citation
        overlaps = c.path == question.path and c.start_line <= question.end_line and c.end_line >= question.start_line
        if overlaps and (not strict or (c.symbol or "").split(".")[-1] == question.name):
            return rank
    return None


def scores(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    out = {f"recall@{c}": sum(r is not None and r <= c for r in ranks) / n for c in (1, 5, K)}
    out[f"mrr@{K}"] = sum(1 / r for r in ranks if r is not None) / n
    return out


def evaluate(repo: str, questions: list[Question], mode: str) -> dict[str, float]:
    from grounding.retrieve import search

    search(repo, questions[0].text, k=K, mode=mode)  # load the encoder and warm the caches outside the timing
    ranks, strict_ranks, seconds = [], [], 0.0
    for q in questions:
        t = time.perf_counter()
        hits = search(repo, q.text, k=K, mode=mode)
        seconds += time.perf_counter() - t
        ranks.append(first_correct(hits, q, strict=False))
        strict_ranks.append(first_correct(hits, q, strict=True))
    strict = {f"strict_{name}": value for name, value in scores(strict_ranks).items()}
    return {**scores(ranks), **strict, "latency_ms": 1000 * seconds / len(questions)}


def print_table(figures: dict[str, dict[str, float]]) -> None:
    columns = ["recall@1", "recall@5", "recall@10", "mrr@10", "strict_recall@1", "strict_mrr@10", "latency_ms"]
    print(f"{'mode':<8}" + "".join(f"{c:>16}" for c in columns))
    for mode, row in figures.items():
        print(f"{mode:<8}" + "".join(f"{row[c]:>16.1f}" if c == "latency_ms" else f"{row[c]:>16.3f}" for c in columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="click", help="an installed package's directory in site-packages")
    parser.add_argument("--questions", type=int, default=150, help="how many functions to ask for, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    # Removed at exit, after the embedded Postgres living in it has stopped (atexit runs last-in first-out).
    tmp = Path(tempfile.mkdtemp(prefix="grounding-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ["GROUNDING_HOME"] = str(tmp / "home")
    from grounding import config, db
    from grounding.ingest import ingest

    config.reset_settings()
    db.reset()
    root = tmp / args.package
    shutil.copytree(SITE_PACKAGES / args.package, root)
    pool = candidates(root)
    picked = random.Random(args.seed).sample(pool, min(args.questions, len(pool)))
    questions = strip_docstrings(root, picked)
    print(f"{args.package}: {len(questions)} questions sampled from {len(pool)} documented functions")

    t = time.perf_counter()
    report = ingest(str(root), name=args.package)
    ingest_s = time.perf_counter() - t
    print(f"ingest: {report.chunks_added} chunks in {ingest_s:.1f}s")

    figures = {mode: evaluate(args.package, questions, mode) for mode in MODES}
    mrr = {mode: row[f"mrr@{K}"] for mode, row in figures.items()}
    ratios = {f"hybrid/{m}": mrr["hybrid"] / mrr[m] if mrr[m] else float("inf") for m in ("lexical", "vector")}
    print_table(figures)
    print("MRR@10 ratios: " + ", ".join(f"{name} = {value:.2f}" for name, value in ratios.items()))
    if args.json:
        summary = {"package": args.package, "seed": args.seed, "questions": len(questions), "documented": len(pool)}
        summary |= {"chunks": report.chunks_added, "ingest_seconds": ingest_s, "modes": figures, "mrr_ratios": ratios}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
