"""The HTTP API under load on loopback: requests/s, p50/p99 latency and errors, against `grounding.search` itself.

The repository is bench/query.py's: real Python trees from site-packages, at least --min-chunks chunks in one
repository, vectors from HashingEmbedder(384). The API runs as `grounding api` in a process of its own (one
uvicorn worker), with a real token of a user granted the repository; the client is httpx from a pool of
--concurrency threads. The baseline, `grounding.search(repo, q, user=...)` called in this process, takes turns
with the API's one-at-a-time calls on the same questions, so both see the same load; the API's overhead is
the difference of their p50s, with a paired bootstrap interval over questions.

    python bench/api.py --reuse-home /tmp/query-home --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus_home  # noqa: E402
from query import REPO, build, harvest_questions, summary  # noqa: E402  (bench/query.py, beside this file)

TARGET_OVERHEAD_MS = 5.0
USER = "bench-api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "grounding.cli", "api", "--port", str(port), "--rate-limit", "0"]
    proc = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`grounding api` exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("`grounding api` did not answer within 120 s")


def paired_interval(a: np.ndarray, b: np.ndarray, *, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(a) - median(b), resampling question pairs."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = np.median(a[idx], axis=1) - np.median(b[idx], axis=1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def added_interval(a: np.ndarray, b: np.ndarray, *, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(a - b): the median of what the API added to each question's own time."""
    rng = np.random.default_rng(seed)
    added = a - b
    idx = rng.integers(0, len(added), size=(samples, len(added)))
    medians = np.median(added[idx], axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-chunks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000, help="requests of the concurrent run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--paired", type=int, default=300, help="questions timed one at a time, API and direct")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--reuse-home", type=Path, help="a GROUNDING_HOME to build into once and reuse after")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--mode", default="hybrid", choices=("hybrid", "vector", "lexical"))
    args = parser.parse_args(argv)

    home = corpus_home(args.reuse_home, prefix="grounding-api-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import httpx

    from grounding import access, config, db, tokens
    from grounding.search.retrieve import search

    config.reset_settings()
    db.reset()
    built = build(home, args.min_chunks)
    questions = harvest_questions(home / "corpus", docstrings=200, identifiers=50, seed=0)
    access.grant(USER, REPO)
    token = tokens.create(USER, expires="1d", label="bench/api.py")
    if not os.environ.get("GROUNDING_DATABASE_URL"):  # the API process must reach the same embedded server
        os.environ["GROUNDING_DATABASE_URL"] = str(db.get_engine().url.render_as_string(hide_password=False))
    port = free_port()
    proc = start_api(port)
    try:
        url = f"http://127.0.0.1:{port}/v1/search"
        headers = {"Authorization": f"Bearer {token.secret}"}
        local = threading.local()

        def over_api(q: str) -> tuple[float, int]:
            if not hasattr(local, "client"):
                local.client = httpx.Client(headers=headers, timeout=60)
            t = time.perf_counter()
            try:
                body = {"repo": REPO, "query": q, "k": args.k, "mode": args.mode}
                status = local.client.post(url, json=body).status_code
            except httpx.HTTPError:
                status = -1
            return time.perf_counter() - t, status

        me_url = f"http://127.0.0.1:{port}/v1/me"

        def whoami() -> float:
            t = time.perf_counter()
            local.client.get(me_url).raise_for_status()
            return time.perf_counter() - t

        def direct(q: str) -> float:
            t = time.perf_counter()
            search(REPO, q, k=args.k, mode=args.mode, user=USER)
            return time.perf_counter() - t

        for q in questions[:10]:  # warm both: caches, connections, the query encoder
            over_api(q), direct(q)
        paired = [questions[i % len(questions)] for i in range(args.paired)]
        api_s, direct_s, me_s, errors = [], [], [], 0
        for i, q in enumerate(paired):
            me_s.append(whoami())
            if i % 2:
                api, status = over_api(q)
                d = direct(q)
            else:
                d = direct(q)
                api, status = over_api(q)
            api_s.append(api), direct_s.append(d)
            errors += status != 200
        a, d = np.asarray(api_s) * 1000, np.asarray(direct_s) * 1000
        overhead = float(np.median(a) - np.median(d))
        low, high = paired_interval(a, d)
        added = float(np.median(a - d))
        added_low, added_high = added_interval(a, d)

        load = [os.getloadavg()[0]]
        stream = [questions[i % len(questions)] for i in range(args.requests)]
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(over_api, stream))
        wall = time.perf_counter() - t
        load.append(os.getloadavg()[0])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        tokens.revoke(token.id)

    seconds = [s for s, _ in results]
    failed = sum(status != 200 for _, status in results)
    concurrent_ms = summary(seconds)
    print(
        f"\n{built['chunks']} chunks, k={args.k}, {os.cpu_count()} cores (client and server share them), "
        f"1-min load {load[0]:.1f} -> {load[1]:.1f}"
    )
    print(f"one at a time, {len(paired)} questions, API and direct taking turns:")
    print(f"  grounding.search (baseline)  p50 {np.median(d):7.2f} ms  p99 {np.percentile(d, 99):7.2f} ms")
    print(f"  POST /v1/search              p50 {np.median(a):7.2f} ms  p99 {np.percentile(a, 99):7.2f} ms")
    me = np.asarray(me_s) * 1000
    print(f"  GET /v1/me (HTTP + token)    p50 {np.median(me):7.2f} ms  p99 {np.percentile(me, 99):7.2f} ms")
    verdict = "meets" if high <= TARGET_OVERHEAD_MS else ("misses" if low > TARGET_OVERHEAD_MS else "may miss")
    print(
        f"  API overhead (p50 difference) {overhead:+.2f} ms, 95% CI [{low:+.2f}, {high:+.2f}]; "
        f"{verdict} the {TARGET_OVERHEAD_MS:.0f} ms target; errors {errors}"
    )
    verdict = "meets" if added_high <= TARGET_OVERHEAD_MS else ("misses" if added_low > TARGET_OVERHEAD_MS else "may miss")
    print(
        f"  added per question (p50 of API - direct, same question) {added:+.2f} ms, "
        f"95% CI [{added_low:+.2f}, {added_high:+.2f}]; {verdict} the target"
    )
    print(f"concurrent: {len(results)} requests at concurrency {args.concurrency} in {wall:.1f} s")
    print(
        f"  {len(results) / wall:.1f} requests/s, p50 {concurrent_ms['p50']:.1f} ms, "
        f"p99 {concurrent_ms['p99']:.1f} ms, errors {failed}"
    )
    if args.json:
        out = {
            "chunks": built["chunks"],
            "paired": {"n": len(paired), "direct_ms": summary(direct_s), "api_ms": summary(api_s)},
            "me_ms": summary(me_s),
            "overhead_p50_ms": overhead,
            "overhead_ci95_ms": [low, high],
            "added_p50_ms": added,
            "added_ci95_ms": [added_low, added_high],
            "paired_errors": errors,
            "concurrent": {
                "requests": len(results),
                "concurrency": args.concurrency,
                "seconds": wall,
                "rps": len(results) / wall,
                "latency_ms": concurrent_ms,
                "errors": failed,
            },
            "load_avg_1m": load,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
