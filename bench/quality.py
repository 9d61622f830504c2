"""Retrieval quality on data nobody here wrote, beside two peers run in the same process, with intervals.

Rows: grounding's lexical, vector and hybrid rankings, and two peers over the same files:
- `bm25s`: plain BM25 (bm25s, k1=1.5, b=0.75, its English stop words) over the chunks grounding stored;
- `minilm-40`: the same MiniLM encoder over 40-line windows of every file (no syntax, no lexical part).
Every ranking is scored at file level (a file's best chunk or window), so rows compare like with like.

Sets (columns):
- `cosqa`: CoSQA dev-500, real web queries over 6,267 Python functions, one file per function
  (../shared/benchmarks/cosqa; choose on these dev queries only).
- `commits-<repo>`: commit-message localisation on real histories (../shared/benchmarks/repos/*.bundle):
  a commit subject asks for the source files it changed, searched in the tree before those commits.

For every row, the difference in MRR@10 from hybrid comes with a paired bootstrap 95% interval
(questions resampled, 2,000 times): a difference whose interval holds 0 is not a difference.

    .venv/bin/pip install bm25s        # the peer; not a dependency of grounding
    python bench/quality.py --sets cosqa,click,gin,express --json quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT.parent / "shared" / "benchmarks"
K = 10
WINDOW_LINES = 40
BOOTSTRAP = 2000

Ranker = Callable[[str], list[str]]  # a query -> file paths, best first


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the sets -------------------------------------------------------------------------------------


def cosqa_set(work: Path) -> tuple[Path, list[tuple[str, frozenset[str]]]]:
    """The CoSQA tree (one file per function) and its 500 dev queries with their gold file."""
    functions = json.loads((BENCHMARKS / "cosqa" / "code_idx_map.txt").read_text())
    root = work / "cosqa"
    if not root.is_dir():
        root.mkdir(parents=True)
        for code, idx in functions.items():
            (root / f"f{int(idx):05d}.py").write_text(code + "\n")
    dev = json.loads((BENCHMARKS / "cosqa" / "cosqa-retrieval-dev-500.json").read_text())
    return root, [(q["doc"], frozenset({f"f{int(q['retrieval_idx']):05d}.py"})) for q in dev]


def commits_set(name: str, work: Path) -> tuple[str, Path, list[tuple[str, frozenset[str]]]]:
    """Ingest a real history, harvest its commit questions; (eval index, its tree, questions with gold files)."""
    from grounding.eval_index import build_eval_index, eval_dir
    from grounding.ingest import ingest

    clone = work / name
    if not clone.is_dir():
        subprocess.run(["git", "clone", "-q", str(BENCHMARKS / "repos" / f"{name}.bundle"), str(clone)], check=True)
    ingest(str(clone), name=name)
    index = build_eval_index(name, harvester="commits")
    gold: dict[str, set[str]] = {}
    for q in index.questions:  # one Question per (commit, gold file): a commit is answered by any of its files
        gold.setdefault(q.question, set()).add(q.path)
    return index.name, eval_dir(name) / "commits-tree", [(q, frozenset(paths)) for q, paths in gold.items()]


# --- rankers --------------------------------------------------------------------------------------


def by_file(paths: Sequence[str]) -> list[str]:
    """Paths in order of their first appearance: a file ranks where its best chunk does."""
    return list(dict.fromkeys(paths))


def grounding_ranker(repo: str, mode: str) -> Ranker:
    from grounding.retrieve import search

    return lambda q: by_file([h.citation.path for h in search(repo, q, k=K * 3, mode=mode, rerank=False)])[:K]


def stored_chunks(repo: str) -> list[tuple[str, str]]:
    """(path, text) of every visible chunk of `repo`: the peers read exactly what grounding indexed."""
    import sqlalchemy as sa

    from grounding import db

    with db.get_engine().connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.path, c.text FROM chunks c JOIN files f ON f.id = c.file_id "
                "JOIN repositories r ON r.id = f.repo_id "
                "WHERE r.name = :n AND f.snapshot_id <= r.current_snapshot_id ORDER BY c.id"
            ),
            {"n": repo},
        ).all()
    return [(p, t) for p, t in rows]


def bm25s_ranker(chunks: list[tuple[str, str]]) -> Ranker:
    import bm25s

    paths = [p for p, _ in chunks]
    retriever = bm25s.BM25(k1=1.5, b=0.75)
    retriever.index(bm25s.tokenize([t for _, t in chunks], stopwords="en", show_progress=False), show_progress=False)
    depth = min(len(chunks), K * 10)

    def rank(query: str) -> list[str]:
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        found, scores = retriever.retrieve(tokens, k=depth, show_progress=False)
        return by_file([paths[i] for i, s in zip(found[0], scores[0]) if s > 0])[:K]

    return rank


def windows(root: Path) -> list[tuple[str, str]]:
    """Every file under root cut into WINDOW_LINES-line windows, without overlap."""
    out = []
    for file in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts):
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        rel = file.relative_to(root).as_posix()
        for lo in range(0, max(len(lines), 1), WINDOW_LINES):
            text = "\n".join(lines[lo : lo + WINDOW_LINES]).strip()
            if text:
                out.append((rel, f"{rel}\n{text}"))
    return out


def minilm_windows_ranker(root: Path) -> Ranker:
    import numpy as np

    from grounding.config import get_settings
    from grounding.embed import load_embedder

    embedder = load_embedder(get_settings().encoder)
    found = windows(root)
    t = time.perf_counter()
    matrix = np.asarray(embedder.embed([text for _, text in found], batch_size=32))
    log(f"minilm-40: {len(found)} windows embedded in {time.perf_counter() - t:.0f}s")
    paths = [p for p, _ in found]

    def rank(query: str) -> list[str]:
        scores = matrix @ np.asarray(embedder.embed_batch([query])[0])
        return by_file([paths[i] for i in np.argsort(-scores)[: K * 10]])[:K]

    return rank


# --- scoring --------------------------------------------------------------------------------------


def reciprocal_ranks(ranker: Ranker, questions: list[tuple[str, frozenset[str]]]) -> tuple[list[float], list[int]]:
    """Per question: 1/rank of the first gold file within K (0 if none), and that rank (0 if none)."""
    rr, ranks = [], []
    for query, gold in questions:
        rank = next((i for i, path in enumerate(ranker(query), 1) if path in gold), 0)
        ranks.append(rank)
        rr.append(1 / rank if rank else 0.0)
    return rr, ranks


def metrics(ranks: list[int]) -> dict[str, float]:
    n = len(ranks)
    return {
        "recall@1": sum(r == 1 for r in ranks) / n,
        "recall@5": sum(0 < r <= 5 for r in ranks) / n,
        "mrr@10": sum(1 / r for r in ranks if r) / n,
    }


def paired_interval(a: list[float], b: list[float], *, seed: int = 0) -> tuple[float, float, float]:
    """mean(a - b) and its paired bootstrap 95% interval."""
    diffs = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(BOOTSTRAP))
    return sum(diffs) / n, means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


def measure(name: str, repo: str, root: Path, questions: list[tuple[str, frozenset[str]]]) -> dict:
    rankers: dict[str, Ranker] = {mode: grounding_ranker(repo, mode) for mode in ("lexical", "vector", "hybrid")}
    rankers["bm25s"] = bm25s_ranker(stored_chunks(repo))
    rankers["minilm-40"] = minilm_windows_ranker(root)
    per_row = {}
    for row, ranker in rankers.items():
        t = time.perf_counter()
        per_row[row] = reciprocal_ranks(ranker, questions)
        log(f"{name} {row}: {len(questions)} questions in {time.perf_counter() - t:.1f}s")
    hybrid = per_row["hybrid"][0]
    table = {}
    for row, (rr, ranks) in per_row.items():
        diff, lo, hi = paired_interval(hybrid, rr)
        table[row] = {**metrics(ranks), "hybrid_minus_row": diff, "interval": [lo, hi]}
    return {"questions": len(questions), "rows": table}


def print_table(name: str, result: dict) -> None:
    print(f"\n{name} ({result['questions']} questions)")
    print(f"{'row':12}{'R@1':>8}{'R@5':>8}{'MRR@10':>9}   hybrid - row [95% interval]")
    for row, m in result["rows"].items():
        lo, hi = m["interval"]
        spread = "" if row == "hybrid" else f"{m['hybrid_minus_row']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        print(f"{row:12}{m['recall@1']:>8.3f}{m['recall@5']:>8.3f}{m['mrr@10']:>9.3f}   {spread}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="cosqa,click,gin,express", help="cosqa and/or click, gin, express")
    parser.add_argument("--home", help="GROUNDING_HOME to reuse across runs (default: a temporary one)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="grounding-quality-"))
    os.environ["GROUNDING_HOME"] = str(home)
    from grounding import db
    from grounding.config import reset_settings
    from grounding.ingest import ingest

    reset_settings()
    work = home / "sets"
    results = {}
    try:
        for name in args.sets.split(","):
            t = time.perf_counter()
            if name == "cosqa":
                root, questions = cosqa_set(work)
                report = ingest(str(root), name="cosqa")
                log(f"cosqa: {report.chunks_added} chunks added in {time.perf_counter() - t:.0f}s")
                repo = "cosqa"
            else:
                repo, root, questions = commits_set(name, work)
                log(f"{name}: eval index {repo}, {len(questions)} commit questions, {time.perf_counter() - t:.0f}s")
            results[name] = measure(name, repo, root, questions)
            print_table(name, results[name])
    finally:
        db.reset()
        db.stop_embedded()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
