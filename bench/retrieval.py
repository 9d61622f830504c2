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
import atexit
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from grounding.evaluation import metrics as evaluation
from grounding.evaluation.datasets import Question
from grounding.evaluation.harvest import DocumentedFunction, documented_functions, strip_docstrings

SITE_PACKAGES = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
MODES = ("lexical", "vector", "hybrid")
K = 10


def read_sources(root: Path) -> dict[str, bytes]:
    """Every .py file under root by its path relative to root, in the order the sample draws from."""
    return {file.relative_to(root).as_posix(): file.read_bytes() for file in sorted(root.rglob("*.py"))}


def strip_sampled(root: Path, files: dict[str, bytes], picked: list[DocumentedFunction]) -> list[Question]:
    """Cut the picked functions' docstrings out of the copied files; the questions carry the new gold spans."""
    questions, rewritten = strip_docstrings(files, picked)
    for path, data in rewritten.items():
        if data != files[path]:
            (root / path).write_bytes(data)
    return questions


def first_correct(hits, question: Question, *, strict: bool) -> int | None:
    """The 1-based rank of the first hit on the gold function (strict: whose symbol ends in its name), or None."""
    name = question.symbol.split(".")[-1]
    for rank, hit in enumerate(hits, 1):
        c = hit.citation
        if evaluation.answers(c, question) and (not strict or (c.symbol or "").split(".")[-1] == name):
            return rank
    return None


def scores(ranks: list[int | None]) -> dict[str, float]:
    return evaluation.retrieval_metrics(ranks, k=K)


def evaluate(repo: str, questions: list[Question], mode: str) -> dict[str, float]:
    from grounding.search.retrieve import search

    search(repo, questions[0].question, k=K, mode=mode)  # load the encoder and warm the caches outside the timing
    ranks, strict_ranks, seconds = [], [], 0.0
    for q in questions:
        t = time.perf_counter()
        hits = search(repo, q.question, k=K, mode=mode)
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
    from grounding.index.ingest import ingest

    config.reset_settings()
    db.reset()
    root = tmp / args.package
    shutil.copytree(SITE_PACKAGES / args.package, root)
    files = read_sources(root)
    pool = documented_functions(files)
    picked = random.Random(args.seed).sample(pool, min(args.questions, len(pool)))
    questions = strip_sampled(root, files, picked)
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
