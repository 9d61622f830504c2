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

Span = tuple[str, int, int]  # path, first and last line (1-based)
Ranker = Callable[[str], list[Span]]  # a query -> hits, best first
# A question's gold: file paths (a file-level set, any chunk of them counts) or line spans (a hit counts
# when it overlaps one).
Gold = frozenset


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
    from grounding.evaluation.eval_index import build_eval_index, eval_dir
    from grounding.index.ingest import ingest

    clone = work / name
    if not clone.is_dir():
        subprocess.run(["git", "clone", "-q", str(BENCHMARKS / "repos" / f"{name}.bundle"), str(clone)], check=True)
    ingest(str(clone), name=name)
    index = build_eval_index(name, harvester="commits")
    gold: dict[str, set[str]] = {}
    for q in index.questions:  # one Question per (commit, gold file): a commit is answered by any of its files
        gold.setdefault(q.question, set()).add(q.path)
    return index.name, eval_dir(name) / "commits-tree", [(q, frozenset(paths)) for q, paths in gold.items()]


def diff_hunks(clone: Path, old: str, new: str, path: str) -> list[tuple[int, int, int, int]]:
    """(old start, old count, new start, new count) of each hunk of `git diff -U0 old new -- path`."""
    import re

    out = subprocess.run(
        ["git", "diff", "-U0", "--no-color", "--no-renames", old, new, "--", path],
        cwd=clone,
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8", "replace")
    return [
        (int(m[1]), int(m[2] if m[2] is not None else 1), int(m[3]), int(m[4] if m[4] is not None else 1))
        for m in re.finditer(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", out, re.MULTILINE)
    ]


def changed_lines(clone: Path, parent: str, sha: str, path: str) -> list[tuple[int, int]]:
    """The lines of `path` at `parent` that commit `sha` changed, as (first, last) spans: `git diff -U0`'s old side.

    A pure insertion after line a is the span (a, a+1), the two lines it goes between."""
    return [
        (start, start + count - 1) if count else (max(start, 1), start + 1)
        for start, count, _, _ in diff_hunks(clone, parent, sha, path)
    ]


def line_map(clone: Path, base: str, commit: str, path: str):
    """A function from a line of `path` at `commit` to the same line at `base`, or None where `base` lacks it.

    Read from `git diff -U0 base commit`: a line inside a hunk's new side is new; every other line moves
    by the lines the hunks before it added or removed."""
    hunks = diff_hunks(clone, base, commit, path)

    def to_base(line: int) -> int | None:
        shift = 0
        for _, old_count, new_start, new_count in hunks:
            if new_count and new_start <= line < new_start + new_count:
                return None
            if (new_start + new_count - 1 if new_count else new_start) < line:
                shift += old_count - new_count
        return line + shift

    return to_base


def commit_lines_set(name: str, work: Path) -> tuple[str, Path, list[tuple[str, frozenset]]]:
    """commits_set at line level: a commit subject asks for the lines it changed (`git diff -U0`, old side).

    Searched in the same tree (BASE, the parent of the oldest kept commit): the changed lines of the
    commit's parent are carried back to BASE (line_map); a span none of whose ends BASE has is dropped,
    and a commit with no span left is not asked. A hit counts when it overlaps a changed span of a gold file."""
    from grounding.config import get_settings
    from grounding.evaluation.harvest_git import harvest_commits

    repo, tree, _ = commits_set(name, work)
    clone = work / name
    settings = get_settings()  # as the eval index harvested it (eval_index._harvest_commits), so BASE is the same
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, check=True).stdout
    harvest = harvest_commits(
        clone,
        commit=commit.decode().strip(),
        max_bytes=settings.max_file_bytes,
        max_line_length=settings.max_line_length,
    )

    def exists(commit: str, path: str) -> bool:
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=clone, capture_output=True)
        return found.returncode == 0

    questions = []
    for c in harvest.commits:
        gold = set()
        for path in c.paths:
            if not (exists(harvest.base, path) and exists(c.parent, path)):
                continue
            to_base = line_map(clone, harvest.base, c.parent, path)
            for lo, hi in changed_lines(clone, c.parent, c.sha, path):
                ends = [line for line in (to_base(lo), to_base(hi)) if line is not None]
                if ends:
                    gold.add((path, min(ends), max(ends)))
        if gold:
            questions.append((c.question, frozenset(gold)))
    log(f"{name}-lines: {len(questions)} of {len(harvest.commits)} commits asked at line level")
    return repo, tree, questions


def dev_set(name: str, work: Path) -> tuple[str, list[tuple[str, frozenset[str]]]]:
    """A dev set already ingested under `work` by this script: (repository searched, questions with gold files)."""
    if name == "cosqa":
        return "cosqa", cosqa_set(work)[1]
    if name.endswith("-lines"):
        repo, _, questions = commit_lines_set(name.removesuffix("-lines"), work)
        return repo, questions
    repo, _, questions = commits_set(name, work)
    return repo, questions


# --- rankers --------------------------------------------------------------------------------------


def by_file(hits: Sequence[Span]) -> list[Span]:
    """Hits in order, one per file: a file ranks where its best chunk does."""
    seen: dict[str, Span] = {}
    for h in hits:
        seen.setdefault(h[0], h)
    return list(seen.values())


def matches(hit: Span, gold: Gold) -> bool:
    """A hit answers a file-level question when its file is gold, a span-level one when it overlaps a gold span."""
    path, start, end = hit
    return any(g == path if isinstance(g, str) else g[0] == path and start <= g[2] and end >= g[1] for g in gold)


def grounding_ranker(repo: str, mode: str, *, rerank: bool = False, index_version: int | None = None) -> Ranker:
    from grounding.search.retrieve import search

    def rank(q: str) -> list[Span]:
        hits = search(repo, q, k=K * 3, mode=mode, rerank=rerank, index_version=index_version)
        return [(h.citation.path, h.citation.start_line, h.citation.end_line) for h in hits]

    return rank


def bm25_ranker(repo: str) -> Ranker:
    """grounding's BM25 alone, straight from Postgres (store.bm25_search): no trigram, no fusion."""
    import sqlalchemy as sa

    from grounding import db, store
    from grounding.lexical import question_tokens

    with db.get_engine().connect() as conn:
        repo_id = store.repo_id(conn, repo)
        spans = {
            cid: (p, s, e)
            for cid, p, s, e in conn.execute(
                sa.text(
                    "SELECT c.id, f.path, c.start_line, c.end_line FROM chunks c JOIN files f ON f.id = c.file_id "
                    "WHERE c.repo_id = :r"
                ),
                {"r": repo_id},
            )
        }

    def rank(q: str) -> list[Span]:
        with db.get_engine().connect() as conn:
            found = store.bm25_search(conn, repo_id, question_tokens(q), k=K * 10)
        return [spans[cid] for cid, _ in found]

    return rank


def stored_chunks(repo: str) -> list[tuple[Span, str]]:
    """(span, text) of every visible chunk of `repo`: the peers read exactly what grounding indexed."""
    import sqlalchemy as sa

    from grounding import db

    with db.get_engine().connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.path, c.start_line, c.end_line, c.text FROM chunks c JOIN files f ON f.id = c.file_id "
                "JOIN repositories r ON r.id = f.repo_id "
                "WHERE r.name = :n AND f.snapshot_id <= r.current_snapshot_id ORDER BY c.id"
            ),
            {"n": repo},
        ).all()
    return [((p, s, e), t) for p, s, e, t in rows]


def bm25s_ranker(chunks: list[tuple[Span, str]]) -> Ranker:
    """The peer: bm25s with its own tokenizer (English stop words, no stemming) over the stored chunks."""
    import bm25s

    spans = [sp for sp, _ in chunks]
    retriever = bm25s.BM25(k1=1.5, b=0.75)
    retriever.index(bm25s.tokenize([t for _, t in chunks], stopwords="en", show_progress=False), show_progress=False)
    depth = min(len(chunks), K * 10)

    def rank(query: str) -> list[Span]:
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        found, scores = retriever.retrieve(tokens, k=depth, show_progress=False)
        return [spans[i] for i, s in zip(found[0], scores[0]) if s > 0]

    return rank


def bm25s_same_tokens_ranker(chunks: list[tuple[Span, str]]) -> Ranker:
    """bm25s fed grounding's own tokens (grounding.lexical, path included): the reference the SQL BM25 must match."""
    import bm25s

    from grounding.lexical import K1, B, chunk_tokens, question_tokens

    spans = [sp for sp, _ in chunks]
    retriever = bm25s.BM25(k1=K1, b=B)
    retriever.index([chunk_tokens(sp[0], t) for sp, t in chunks], show_progress=False)
    vocab = retriever.vocab_dict
    depth = min(len(chunks), K * 10)

    def rank(query: str) -> list[Span]:
        tokens = [t for t in question_tokens(query) if t in vocab]
        if not tokens:
            return []
        found, scores = retriever.retrieve([tokens], k=depth, show_progress=False)
        return [spans[i] for i, s in zip(found[0], scores[0]) if s > 0]

    return rank


def windows(root: Path) -> list[tuple[Span, str]]:
    """Every file under root cut into WINDOW_LINES-line windows, without overlap."""
    out = []
    for file in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts):
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        rel = file.relative_to(root).as_posix()
        for lo in range(0, max(len(lines), 1), WINDOW_LINES):
            text = "\n".join(lines[lo : lo + WINDOW_LINES]).strip()
            if text:
                out.append(((rel, lo + 1, min(lo + WINDOW_LINES, len(lines))), f"{rel}\n{text}"))
    return out


def minilm_windows_ranker(root: Path) -> Ranker:
    import hashlib

    import numpy as np

    from grounding.config import _default_encoder
    from grounding.index.embed import load_embedder

    embedder = load_embedder(_default_encoder())  # the peer is MiniLM, whatever encoder grounding is given
    found = windows(root)
    # Cached under GROUNDING_HOME by the windows' text: a rerun over the same trees embeds nothing.
    key = hashlib.sha256("\0".join(text for _, text in found).encode()).hexdigest()[:20]
    cache = Path(os.environ["GROUNDING_HOME"]) / "minilm-40" / f"{key}.npy"
    t = time.perf_counter()
    if cache.is_file():
        matrix = np.load(cache)
    else:
        matrix = np.asarray(embedder.embed([text for _, text in found], batch_size=32))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, matrix)
    log(f"minilm-40: {len(found)} windows embedded in {time.perf_counter() - t:.0f}s")
    spans = [sp for sp, _ in found]

    def rank(query: str) -> list[Span]:
        scores = matrix @ np.asarray(embedder.embed_batch([query])[0])
        return [spans[i] for i in np.argsort(-scores)[: K * 10]]

    return rank


# --- scoring --------------------------------------------------------------------------------------


def reciprocal_ranks(ranker: Ranker, questions: list[tuple[str, Gold]]) -> tuple[list[float], list[int]]:
    """Per question: 1/rank of the first gold hit within K (0 if none), and that rank (0 if none).

    On a file-level set a file counts once, at its best hit; on a span-level set every hit counts."""
    rr, ranks = [], []
    for query, gold in questions:
        hits = ranker(query)
        if all(isinstance(g, str) for g in gold):
            hits = by_file(hits)
        rank = next((i for i, hit in enumerate(hits[:K], 1) if matches(hit, gold)), 0)
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
    """mean(a - b) and its paired bootstrap 95% interval (grounding.search.fusion's, resampled BOOTSTRAP times)."""
    from grounding.search.fusion import paired_interval as interval

    return interval(a, b, resamples=BOOTSTRAP, seed=seed)


Part = tuple[str, Path, list[tuple[str, Gold]]]  # a repository searched, its tree, its questions


def reranker_available(repo: str) -> bool:
    from grounding import db
    from grounding.config import get_settings
    from grounding.search.retrieve import configured_reranker

    with db.get_engine().connect() as conn:
        return configured_reranker(conn, repo, get_settings().reranker) is not None


def settle() -> None:
    """VACUUM ANALYZE the tables search reads, as autovacuum would in a few minutes.

    An ingest that replaces chunks leaves their old rows dead in the HNSW graph until a vacuum, which
    costs the vector ranking recall meanwhile (measured on cosqa right after a re-chunk: vector MRR@10
    .509, and .515 once autovacuum had run). Measuring after a vacuum makes runs repeatable."""
    import sqlalchemy as sa

    from grounding import db

    with db.get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("embeddings", "chunks", "files"):
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))


def measure(name: str, parts: list[Part], *, rows: Sequence[str] | None = None) -> dict:
    """Every row over every part of a set; a set's questions are the parts' questions, in order."""
    settle()
    per_row: dict[str, tuple[list[float], list[int]]] = {}
    for repo, root, questions in parts:
        rankers: dict[str, Ranker] = {mode: grounding_ranker(repo, mode) for mode in ("lexical", "vector", "hybrid")}
        if reranker_available(repo):
            rankers["hybrid+rerank"] = grounding_ranker(repo, "hybrid", rerank=True)
        rankers["bm25"] = bm25_ranker(repo)
        chunks = stored_chunks(repo)
        rankers["bm25s"] = bm25s_ranker(chunks)
        rankers["bm25s-tokens"] = bm25s_same_tokens_ranker(chunks)
        rankers["minilm-40"] = minilm_windows_ranker(root)
        for row, ranker in rankers.items():
            if rows and row not in rows and row != "hybrid":
                continue
            t = time.perf_counter()
            rr, ranks = reciprocal_ranks(ranker, questions)
            log(f"{name} {repo} {row}: {len(questions)} questions in {time.perf_counter() - t:.1f}s")
            got = per_row.setdefault(row, ([], []))
            got[0].extend(rr)
            got[1].extend(ranks)
    n = sum(len(q) for _, _, q in parts)
    hybrid = per_row["hybrid"][0]
    table = {}
    for row, (rr, ranks) in per_row.items():
        if len(rr) != n:
            continue  # a row some part lacked (no reranker there) is not comparable
        diff, lo, hi = paired_interval(hybrid, rr)
        table[row] = {**metrics(ranks), "hybrid_minus_row": diff, "interval": [lo, hi], "ranks": ranks}
    return {"questions": n, "texts": [q for _, _, qs in parts for q, _ in qs], "rows": table}


def handwritten_parts(work: Path) -> list[Part]:
    """bench/handwritten.json: 30 questions written by hand about three installed codebases, gold line spans."""
    from grounding.index.ingest import ingest

    spec = json.loads((ROOT / "bench" / "handwritten.json").read_text())
    parts = []
    for repo in spec["repos"]:
        root = Path(repo["root"])
        if "extract" in repo:  # the JDK's sources are a zip: unpacked under the work directory
            target = work / repo["name"]
            if not target.is_dir():
                target.mkdir(parents=True)
                subprocess.run(
                    [
                        "unzip",
                        "-q",
                        "-o",
                        "/usr/lib/jvm/temurin-25-jdk-amd64/lib/src.zip",
                        "java.net.http/*",
                        "-d",
                        str(target),
                    ],
                    check=True,
                )
            root = target / "java.net.http"
        if not root.is_dir():
            raise SystemExit(f"{repo['name']}: {root} is not installed here ({repo['version']})")
        ingest(str(root), name=repo["name"])
        questions = [
            (q["question"], frozenset((g["path"], g["start"], g["end"]) for g in q["gold"]))
            for q in spec["questions"]
            if q["repo"] == repo["name"]
        ]
        parts.append((repo["name"], root, questions))
    return parts


def docstring_parts(repo: str) -> tuple[Part, Part]:
    """Docstring questions of `repo`'s eval index (docstrings cut out), test functions' apart from the others.

    A question text that repeats, or whose gold function body repeats another's, is dropped with every
    copy: it has no single answer.
    """
    import hashlib

    from grounding.evaluation.eval_index import build_eval_index, eval_dir
    from grounding.evaluation.harvest_git import is_test_path

    index = build_eval_index(repo, harvester="docstrings")
    tree = eval_dir(repo) / "docstrings-tree"
    texts: dict[str, int] = {}
    bodies: dict[str, int] = {}
    keyed = []
    for q in index.questions:
        lines = (tree / q.path).read_text(encoding="utf-8", errors="replace").splitlines()
        body = hashlib.sha256("\n".join(lines[q.start_line - 1 : q.end_line]).strip().encode()).hexdigest()
        text = " ".join(q.question.lower().split())
        texts[text] = texts.get(text, 0) + 1
        bodies[body] = bodies.get(body, 0) + 1
        keyed.append((q, text, body))
    kept = [q for q, text, body in keyed if texts[text] == 1 and bodies[body] == 1]
    log(f"docstrings {repo}: {len(index.questions)} harvested, {len(kept)} after removing repeated texts and bodies")

    def part(test: bool) -> Part:
        qs = [
            (q.question, frozenset({(q.path, q.start_line, q.end_line)})) for q in kept if is_test_path(q.path) == test
        ]
        return index.name, tree, qs

    return part(False), part(True)


def print_table(name: str, result: dict) -> None:
    print(f"\n{name} ({result['questions']} questions)")
    print(f"{'row':12}{'R@1':>8}{'R@5':>8}{'MRR@10':>9}   hybrid - row [95% interval]")
    for row, m in result["rows"].items():
        lo, hi = m["interval"]
        spread = "" if row == "hybrid" else f"{m['hybrid_minus_row']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        print(f"{row:12}{m['recall@1']:>8.3f}{m['recall@5']:>8.3f}{m['mrr@10']:>9.3f}   {spread}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets",
        default="cosqa,click,gin,express,handwritten,docstrings-click,docstrings-werkzeug",
        help="cosqa, click, gin, express (commits), handwritten, docstrings-REPO (an ingested Python repository)",
    )
    parser.add_argument("--home", help="GROUNDING_HOME to reuse across runs (default: a temporary one)")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--rows", help="only these rows (comma-separated; hybrid is always measured)")
    parser.add_argument(
        "--encoder", help="a local encoder directory for grounding's index (GROUNDING_ENCODER); the peers keep MiniLM"
    )
    parser.add_argument("--against", help="an earlier run's --json: each row now minus then, paired by question")
    args = parser.parse_args(argv)
    rows = args.rows.split(",") if args.rows else None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="grounding-quality-"))
    os.environ["GROUNDING_HOME"] = str(home)
    if args.encoder:
        os.environ["GROUNDING_ENCODER"] = str(Path(args.encoder).resolve())
    from grounding import db
    from grounding.config import reset_settings
    from grounding.index.ingest import ingest

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
                results[name] = measure(name, [("cosqa", root, questions)], rows=rows)
            elif name == "handwritten":
                results[name] = measure(name, handwritten_parts(work), rows=rows)
            elif name.startswith("docstrings-"):
                source, tests = docstring_parts(name.removeprefix("docstrings-"))
                results[name] = measure(name, [source], rows=rows)
                print_table(name, results[name])
                name = f"{name}-tests"
                if not tests[2]:
                    log(f"{name}: no question from a test function")
                    continue
                results[name] = measure(name, [tests], rows=rows)
            elif name.endswith("-lines"):
                repo, root, questions = commit_lines_set(name.removesuffix("-lines"), work)
                results[name] = measure(name, [(repo, root, questions)], rows=rows)
            else:
                repo, root, questions = commits_set(name, work)
                log(f"{name}: eval index {repo}, {len(questions)} commit questions, {time.perf_counter() - t:.0f}s")
                results[name] = measure(name, [(repo, root, questions)], rows=rows)
            print_table(name, results[name])
    finally:
        db.reset()
        db.stop_embedded()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.against:
        print_against(results, json.loads(Path(args.against).read_text()))


def print_against(now: dict, then: dict) -> None:
    """MRR@10 of each row now minus the earlier run's, paired by question (same set, same questions)."""
    print("\nnow minus then, MRR@10 [95% interval]")
    for name, result in now.items():
        if then.get(name, {}).get("texts", result["texts"]) != result["texts"]:
            print(f"  {name:22} asked other questions then: not paired")
            continue
        earlier = then.get(name, {}).get("rows", {})
        for row, m in result["rows"].items():
            old = earlier.get(row, {}).get("ranks")
            if old is None or len(old) != len(m["ranks"]):
                continue  # the earlier run lacked the row, or (a run without texts) asked other questions
            diff, lo, hi = paired_interval(*([1 / r if r else 0.0 for r in ranks] for ranks in (m["ranks"], old)))
            print(f"  {name:22} {row:14} {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
