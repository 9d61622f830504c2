"""Vector storage: `halfvec` (what grounding stores) against `vector`, for ranking, recall, latency, disk and RAM.

Two parts, both in one embedded Postgres (pgvector's HNSW, m=16, ef_construction=64, ef_search=100,
as the product builds and searches it):

1. Ranking with the real encoder: CoSQA's 6,267 functions and 500 dev queries embedded by MiniLM,
   stored both ways; MRR@10 of exact search, HNSW over `vector` and HNSW over `halfvec`, with the paired
   bootstrap interval of halfvec minus vector, and each one's recall@10 against exact search.
2. Scale: --n chunks (default 1,000,000) of real code (12-line windows of site-packages' .py files,
   6 lines apart), embedded by HashingEmbedder(384) (MiniLM would take about an hour a million here),
   written as one repository's chunks. Each storage's table and HNSW index in a scratch table: build
   time, bytes per million chunks (table, index); then the product's own vector search
   (store.hybrid_search, vector only: the joins and snapshot visibility included) over the halfvec
   index: p50/p99 latency and recall@10 against exact search (numpy, fp32), warm, for several
   hnsw.ef_search values (--ef-search).

    python bench/vectors.py [--n 1000000] [--queries 300] [--reuse-home DIR] [--skip-ranking] [--skip-storages]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SITE_PACKAGES, corpus_home  # noqa: E402
from quality import BENCHMARKS, K, log, paired_interval  # noqa: E402

from grounding.store.writes import vector_literal  # noqa: E402

DIM = 384
WINDOW, STRIDE = 12, 6
EF_SEARCH = 100
STORAGES = (("vector", "vector_ip_ops"), ("halfvec", "halfvec_ip_ops"))


def copy_rows(conn, table: str, vectors: np.ndarray, *, first_id: int = 0) -> None:
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} (id, embedding) FROM STDIN") as copy:
        for i, row in enumerate(vectors):
            copy.write_row((first_id + i, vector_literal(row)))


def scratch_table(conn, name: str, storage: str, ops: str, vectors: np.ndarray) -> dict:
    """`vectors` in a fresh table of `storage`, and its HNSW index: build seconds and sizes."""
    import sqlalchemy as sa

    conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    conn.execute(
        sa.text(f"CREATE TABLE {name} (id bigint PRIMARY KEY, embedding {storage}({vectors.shape[1]}) NOT NULL)")
    )
    copy_rows(conn, name, vectors)
    conn.execute(sa.text("SET maintenance_work_mem = '6GB'"))
    started = time.monotonic()
    conn.execute(sa.text(f"CREATE INDEX {name}_hnsw ON {name} USING hnsw (embedding {ops})"))
    built = time.monotonic() - started
    conn.execute(sa.text(f"ANALYZE {name}"))
    table = conn.execute(sa.text(f"SELECT pg_table_size('{name}')")).scalar()
    index = conn.execute(sa.text(f"SELECT pg_relation_size('{name}_hnsw')")).scalar()
    return {"build_s": built, "table_bytes": int(table), "index_bytes": int(index)}


def scratch_search(conn, name: str, storage: str, queries: np.ndarray, k: int = K) -> list[list[int]]:
    import sqlalchemy as sa

    conn.execute(sa.text(f"SET hnsw.ef_search = {EF_SEARCH}"))
    dim = queries.shape[1]
    out = []
    for q in queries:
        rows = conn.execute(
            sa.text(f"SELECT id FROM {name} ORDER BY embedding <#> CAST(:q AS {storage}({dim})) LIMIT {k}"),
            {"q": vector_literal(q)},
        )
        out.append([int(r[0]) for r in rows])
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> list[list[int]]:
    out = []
    for lo in range(0, len(queries), 64):
        scores = queries[lo : lo + 64] @ vectors.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        for row, cand in zip(scores, top):
            out.append([int(i) for i in cand[np.argsort(-row[cand])]])
    return out


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def reciprocal_ranks(found: list[list[int]], gold: list[int]) -> list[float]:
    return [1.0 / (f.index(g) + 1) if g in f else 0.0 for f, g in zip(found, gold)]


def ranking_part(conn) -> None:
    from grounding.config import get_settings
    from grounding.index.embed import HFEncoder

    cosqa = BENCHMARKS / "cosqa"
    code_map = json.loads((cosqa / "code_idx_map.txt").read_text())
    codes = [""] * len(code_map)
    for code, i in code_map.items():
        codes[i] = code
    dev = json.loads((cosqa / "cosqa-retrieval-dev-500.json").read_text())
    encoder = HFEncoder(get_settings().encoder)
    started = time.monotonic()
    vectors = encoder.embed(codes, batch_size=64).astype(np.float32)
    queries = encoder.embed([q["doc"] for q in dev]).astype(np.float32)
    gold = [int(q["retrieval_idx"]) for q in dev]
    log(
        f"ranking: embedded {len(codes)} functions by MiniLM ({encoder.precision}) "
        f"in {time.monotonic() - started:.0f} s"
    )
    exact = exact_top(vectors, queries)
    rows = {"exact (numpy, fp32)": exact}
    for storage, ops in STORAGES:
        scratch_table(conn, f"bench_rank_{storage}", storage, ops, vectors)
        rows[f"HNSW over {storage}"] = scratch_search(conn, f"bench_rank_{storage}", storage, queries)
    rr = {name: reciprocal_ranks(found, gold) for name, found in rows.items()}
    print(f"\n## Ranking: CoSQA dev-500 over 6,267 functions, MiniLM vectors, MRR@{K}\n")
    print(f"| search | MRR@{K} | recall@{K} vs exact |\n|---|---|---|")
    for name, found in rows.items():
        print(f"| {name} | {np.mean(rr[name]):.4f} | {recall(found, exact):.4f} |")
    mean, lo, hi = paired_interval(rr["HNSW over halfvec"], rr["HNSW over vector"])
    print(f"\nhalfvec minus vector, MRR@{K}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] (paired bootstrap 95%)")


def windows(n: int) -> list[tuple[str, int, int, str]]:
    """(path, first line, last line, text) of n 12-line windows of real Python, 6 lines apart, files in order."""
    out: list[tuple[str, int, int, str]] = []
    for path in sorted(SITE_PACKAGES.rglob("*.py")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        rel = str(path.relative_to(SITE_PACKAGES))
        for start in range(0, max(1, len(lines) - WINDOW + 1), STRIDE):
            text = "\n".join(lines[start : start + WINDOW]).replace("\x00", "")
            if text.strip():
                out.append((rel, start + 1, min(len(lines), start + WINDOW), text))
                if len(out) == n:
                    return out
    raise SystemExit(f"site-packages holds only {len(out)} windows; ask for fewer with --n")


def write_repository(conn, name: str, chunks: list[tuple[str, int, int, str]], vectors: np.ndarray) -> tuple[int, int]:
    """One repository of `chunks` with an active halfvec index version, as ingest leaves it: (repo id, version id)."""
    import sqlalchemy as sa

    from grounding import store
    from grounding.store.writes import VECTOR_TYPE

    repo = conn.execute(
        sa.text("INSERT INTO repositories (name, source) VALUES (:n, :s) RETURNING id"), {"n": name, "s": "bench"}
    ).scalar()
    snap = conn.execute(
        sa.text("INSERT INTO snapshots (repo_id, status) VALUES (:r, 'complete') RETURNING id"), {"r": repo}
    ).scalar()
    paths = sorted({c[0] for c in chunks})
    raw = conn.connection.dbapi_connection
    with (
        raw.cursor() as cur,
        cur.copy("COPY files (repo_id, snapshot_id, path, language, content_hash, size) FROM STDIN") as copy,
    ):
        for p in paths:
            copy.write_row((repo, snap, p, "python", p, 0))
    file_ids = dict(conn.execute(sa.text("SELECT path, id FROM files WHERE repo_id = :r"), {"r": repo}).all())
    first = conn.execute(sa.text("SELECT coalesce(max(id), 0) + 1 FROM chunks")).scalar()
    with (
        raw.cursor() as cur,
        cur.copy(
            "COPY chunks (id, file_id, repo_id, ordinal, start_byte, end_byte, start_line, end_line, kind, context,"
            " text,"
            " token_count, content_hash) FROM STDIN"
        ) as copy,
    ):
        for i, (p, s, e, text) in enumerate(chunks):
            copy.write_row((first + i, file_ids[p], repo, i, 0, len(text), s, e, "window", "", text, 0, f"{first + i}"))
    version = conn.execute(
        sa.text(
            "INSERT INTO index_versions (repo_id, encoder, dim, status) "
            "VALUES (:r, 'hashing-384', :d, 'active') RETURNING id"
        ),
        {"r": repo, "d": DIM},
    ).scalar()
    with raw.cursor() as cur, cur.copy("COPY embeddings (index_version_id, chunk_id, embedding) FROM STDIN") as copy:
        for i, row in enumerate(vectors):
            copy.write_row((version, first + i, vector_literal(row)))
    conn.execute(sa.text("UPDATE repositories SET current_snapshot_id = :s WHERE id = :r"), {"s": snap, "r": repo})
    conn.execute(sa.text("SET maintenance_work_mem = '6GB'"))
    started = time.monotonic()
    store.build_vector_index(conn, store.index_version(conn, version))
    log(f"scale: product HNSW over {VECTOR_TYPE} built in {time.monotonic() - started:.0f} s")
    conn.execute(sa.text("ANALYZE embeddings"))
    return repo, first


def scale_part(conn_factory, n: int, n_queries: int, reuse: bool, *, storages: bool, ef_searches: list[int]) -> None:
    import sqlalchemy as sa

    from grounding import store
    from grounding.index.embed import HashingEmbedder
    from grounding.store import search as store_search

    name = f"bench-vectors-{n}"
    with conn_factory() as conn:
        found_repo = conn.execute(sa.text("SELECT id FROM repositories WHERE name = :n"), {"n": name}).scalar()
        stored = None
        if reuse and found_repo is not None:  # the windows as written then (site-packages may have changed since)
            stored = conn.execute(
                sa.text(
                    "SELECT f.path, c.start_line, c.end_line, c.text FROM chunks c JOIN files f ON f.id = c.file_id "
                    "WHERE c.repo_id = :r ORDER BY c.id"
                ),
                {"r": found_repo},
            ).all()
    started = time.monotonic()
    chunks = [tuple(row) for row in stored] if stored else windows(n)
    vectors = HashingEmbedder(DIM).embed([c[3] for c in chunks], batch_size=4096).astype(np.float32)
    log(
        f"scale: {n:,} windows of {len({c[0] for c in chunks}):,} files embedded by hashing-384 "
        f"in {time.monotonic() - started:.0f} s"
    )
    rng = random.Random(0)
    picks = rng.sample(range(n), n_queries)
    # A question: the window's first 4 lines, so the nearest chunks are near but not only itself.
    queries = HashingEmbedder(DIM).embed(["\n".join(chunks[i][3].splitlines()[:4]) for i in picks]).astype(np.float32)
    exact = exact_top(vectors, queries)
    sizes = {}
    with conn_factory() as conn:
        for storage, ops in STORAGES if storages else ():
            sizes[storage] = scratch_table(conn, f"bench_scale_{storage}", storage, ops, vectors)
            log(f"scale: {storage}: HNSW built in {sizes[storage]['build_s']:.0f} s")
            found = scratch_search(conn, f"bench_scale_{storage}", storage, queries)
            sizes[storage]["recall"] = recall(found, exact)
            conn.commit()
        if stored is None:
            if found_repo is not None:
                conn.execute(sa.text("DELETE FROM repositories WHERE id = :r"), {"r": found_repo})
            repo, first = write_repository(conn, name, chunks, vectors)
            conn.commit()
        else:
            repo = found_repo
            first = conn.execute(sa.text("SELECT min(c.id) FROM chunks c WHERE c.repo_id = :r"), {"r": repo}).scalar()
    with conn_factory() as conn:
        version = store.active_index_version(conn, repo)
        conn.commit()
        searched = {ef: product_search(conn, repo, version, queries, first, ef) for ef in ef_searches}
        searched[f"chosen by size ({store_search.ef_search_for(conn, version.id)})"] = product_search(
            conn, repo, version, queries, first, None
        )
    print(
        f"\n## Scale: {n:,} chunks of real code, hashing-384 vectors, "
        f"HNSW m=16 ef_construction=64 ef_search={EF_SEARCH}\n"
    )
    if sizes:
        print("| storage | HNSW build | table per 1M chunks | HNSW index per 1M chunks | recall@10 vs exact |")
        print("|---|---|---|---|---|")
        per_million = 1_000_000 / n
        for storage, s in sizes.items():
            print(
                f"| {storage} | {s['build_s']:.0f} s | {s['table_bytes'] * per_million / 2**20:,.0f} MiB "
                f"| {s['index_bytes'] * per_million / 2**20:,.0f} MiB | {s['recall']:.4f} |"
            )
        ratio = sizes["halfvec"]["index_bytes"] / sizes["vector"]["index_bytes"]
        print(
            f"\nhalfvec's HNSW index is {ratio:.2f}x vector's; "
            f"its table {sizes['halfvec']['table_bytes'] / sizes['vector']['table_bytes']:.2f}x"
        )
    print(
        f"\nThe product's vector search (store.hybrid_search, vector only, halfvec; joins and snapshot visibility), "
        f"{len(queries)} questions, warm, by hnsw.ef_search:\n"
    )
    print("| ef_search | p50 ms | p99 ms | recall@10 vs exact |\n|---|---|---|---|")
    for ef, (times, hits) in searched.items():
        print(f"| {ef} | {np.percentile(times, 50):.1f} | {np.percentile(times, 99):.1f} | {recall(hits, exact):.4f} |")


def product_search(conn, repo: int, version, queries: np.ndarray, first: int, ef: int | None) -> tuple[list, list]:
    """(milliseconds, hits as corpus positions) of store.hybrid_search in vector mode with hnsw.ef_search = ef,
    or as the product chooses it by the index's size (None)."""
    from grounding import store
    from grounding.store import search as store_search

    saved = store_search.EF_SEARCH, store_search.EF_ROWS
    store_search._ef_cache.clear()
    if ef is not None:
        store_search.EF_SEARCH, store_search.EF_ROWS = ef, 10**12
    try:
        times, hits = [], []
        for q in list(queries[:20]) + list(queries):  # the first 20 warm the cache and are not counted
            t = time.perf_counter()
            with conn.begin():
                result = store.hybrid_search(
                    conn,
                    repo,
                    version,
                    query_vector=q,
                    terms=[],
                    fragments=[],
                    candidates=K,
                    rrf_k=5,
                    k=K,
                    use_lexical=False,
                    use_trigram=False,
                )
            times.append((time.perf_counter() - t) * 1000)
            hits.append([h.chunk_id - first for h in result])
        return times[20:], hits[20:]
    finally:
        store_search.EF_SEARCH, store_search.EF_ROWS = saved
        store_search._ef_cache.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="chunks at scale (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--reuse-home", type=Path, help="GROUNDING_HOME to build into once and reuse")
    parser.add_argument("--skip-ranking", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-storages", action="store_true", help="no scratch vector/halfvec tables at scale")
    parser.add_argument("--ef-search", default="40,100,200,400", help="hnsw.ef_search values for the product search")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus_home(args.reuse_home, prefix="grounding-vectors-")

    from grounding import db

    engine = db.get_engine()
    if not args.skip_ranking:
        with engine.connect() as conn:
            ranking_part(conn)
            conn.commit()
    if not args.skip_scale:
        scale_part(
            engine.connect,
            args.n,
            args.queries,
            reuse=args.reuse_home is not None,
            storages=not args.skip_storages,
            ef_searches=[int(x) for x in args.ef_search.split(",")],
        )
    db.reset()
    db.stop_embedded()


if __name__ == "__main__":
    main()
