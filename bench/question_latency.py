"""What encoding one question costs `ask` with another encoder, against the default MiniLM, in one process.

`ask` encodes every question once, alone (batch of one), before it searches; that time is added to its
latency whatever the index size. Both encoders take turns on the same CoSQA dev questions (real web
queries), --reps rounds, and the p50/p99 of each is printed with the ratio to MiniLM's.

    python bench/question_latency.py --encoder models/all-mpnet-base-v2 [--questions 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import BENCHMARKS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="a local encoder directory to compare with MiniLM")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    from grounding.config import _default_encoder
    from grounding.index.embed import HFEncoder

    dev = json.loads((BENCHMARKS / "cosqa" / "cosqa-retrieval-dev-500.json").read_text())
    questions = [q["doc"] for q in dev[: args.questions]]
    encoders = {"MiniLM (default)": HFEncoder(_default_encoder()), args.encoder: HFEncoder(args.encoder)}
    for encoder in encoders.values():
        encoder.embed_batch(questions[:5])  # load, and the precision check, before timing
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.reps):
        for question in questions:
            for name, encoder in encoders.items():  # alternate per question: drift hits both alike
                t = time.perf_counter()
                encoder.embed_batch([question])
                times[name].append((time.perf_counter() - t) * 1000)
    base = np.percentile(times["MiniLM (default)"], [50, 99])
    print(f"one question encoded, {len(questions)} CoSQA questions x {args.reps} rounds, ms")
    print(f"{'encoder':40}{'p50':>8}{'p99':>8}{'p50 ratio':>11}")
    for name, ms in times.items():
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"{name[-40:]:40}{p50:8.1f}{p99:8.1f}{p50 / base[0]:10.2f}x")


if __name__ == "__main__":
    main()
