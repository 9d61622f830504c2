"""The cost of orchestration: an ingest through `prefect deployment run` versus calling `ingest` directly.

    .venv/bin/python bench/orchestration.py [--package requests] [--runs 3] [--encoder hashing-64|default] [--shards 2]

Starts `grounding serve` (Prefect server + workers, separate processes) on a fresh embedded Postgres,
then ingests the same copied package as new repositories three ways, each `--runs` times:
direct (`ingest()` in this warm process), CLI (`grounding ingest` in a fresh process: imports and
encoder load included) and deployment (`prefect deployment run ingest-repo/default`, from request
to the flow run's COMPLETED state, as a worker runs it in a fresh process), and sharded (the same
deployment with `-p shards=N`: N ingest-shard flow runs on the cpu pool's worker). Prints medians and
ratios, and the per-stage overhead of sharding: the stage seconds of a sharded ingest (its shards'
re-reading included) against those of the direct one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import site
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(env: dict, *args: str) -> str:
    cmd = [sys.executable, "-m", "prefect", *args]
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


def _deployment_run(env: dict, source: Path, name: str, *params: str) -> float:
    t = time.perf_counter()
    out = _prefect(
        env, "deployment", "run", "ingest-repo/default", "-p", f"source={source}", "-p", f"name={name}", *params
    )
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    while True:
        state = json.loads(_prefect(env, "flow-run", "inspect", run_id, "--output", "json"))["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.25)
    if state != "COMPLETED":
        raise SystemExit(f"flow run {run_id} ended {state}")
    return time.perf_counter() - t


def _stage_seconds(name: str) -> float:
    """The seconds an ingest's stages took, summed over its shards (each shard's re-read of its files too)."""
    import sqlalchemy as sa

    from grounding import db

    with db.get_engine().connect() as conn:
        stats = conn.execute(
            sa.text(
                "SELECT s.stats FROM repositories r JOIN snapshots s ON s.id = r.current_snapshot_id WHERE r.name = :n"
            ),
            {"n": name},
        ).scalar_one()
    shards = stats.get("shards", {}).values()
    return sum(stats["seconds"].values()) + sum(s["seconds"].get("read", 0.0) for s in shards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default="requests")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--encoder", default="hashing-64", help="'default' for the real encoder")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grounding-bench-orch-"))
    os.environ.update({"GROUNDING_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"})
    if args.encoder != "default":
        os.environ["GROUNDING_ENCODER"] = args.encoder
    from grounding import db
    from grounding.index.ingest import ingest

    os.environ["GROUNDING_DATABASE_URL"] = db.embedded_url(work / "pgdata")
    from grounding.config import reset_settings

    reset_settings()
    db.get_engine()
    site_packages = next(Path(p) for p in site.getsitepackages() if p.endswith("site-packages"))
    src = work / args.package
    shutil.copytree(site_packages / args.package, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(work / "prefect"), "PREFECT_WORKER_QUERY_SECONDS": "1"})
    log = open(work / "serve.log", "w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "grounding.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while "grounding is serving" not in (work / "serve.log").read_text():
            if serve.poll() is not None:
                raise SystemExit((work / "serve.log").read_text()[-2000:])
            time.sleep(0.5)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        ingest(str(src), name="warmup")  # loads the encoder in this process: "direct" is the warm path
        times: dict[str, list[float]] = {"direct": [], "cli": [], "deployment": [], "shards-here": [], "sharded": []}
        plain = ("-p", "tune_fusion=false")  # as direct: no fusion tuning after the ingest
        sharding = (*plain, "-p", f"shards={args.shards}", "-p", "shard_pool=cpu")
        for i in range(args.runs):
            t = time.perf_counter()
            ingest(str(src), name=f"direct-{i}")
            times["direct"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "grounding.cli", "ingest", str(src), "--name", f"cli-{i}", "-q"],
                env=env,
                check=True,
                capture_output=True,
            )
            times["cli"].append(time.perf_counter() - t)
            times["deployment"].append(_deployment_run(env, src, f"deployment-{i}", *plain))
            t = time.perf_counter()
            ingest(str(src), name=f"shards-here-{i}", shards=args.shards)  # one shard after another, here
            times["shards-here"].append(time.perf_counter() - t)
            times["sharded"].append(_deployment_run(env, src, f"sharded-{i}", *sharding))
        stages = {
            way: [_stage_seconds(f"{way}-{i}") for i in range(args.runs)]
            for way in ("direct", "shards-here", "sharded")
        }
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)
        log.close()
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.package}, encoder {args.encoder}, {args.runs} runs each (median seconds):")
    for k, v in medians.items():
        print(
            f"{k:11} {v:8.2f} s   x{v / medians['direct']:.2f} of direct   runs: "
            + ", ".join(f"{t:.2f}" for t in times[k])
        )
    print(
        f"deployment overhead over direct: {medians['deployment'] - medians['direct']:.2f} s; "
        f"over a fresh CLI process: {medians['deployment'] - medians['cli']:.2f} s"
    )
    print("stage seconds (list/read, chunk, embed, write; the shards' re-reading of their files included), median:")
    base = statistics.median(stages["direct"])
    for way, label in (
        ("direct", "one process"),
        ("shards-here", f"{args.shards} shards, one after another, in this process"),
        ("sharded", f"{args.shards} shards side by side on the worker (2 cores)"),
    ):
        v = statistics.median(stages[way])
        print(f"  {label:55} {v:6.2f} s   x{v / base:.3f}   ({v / base - 1:+.1%} over one process)")
    if args.json:
        Path(args.json).write_text(json.dumps({"times": times, "medians": medians, "stages": stages}, indent=2))
    db.reset()
    db.stop_embedded()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
