"""The real encoder's speed on CPUs: bf16 and token-length batches against today's fp32, in one process.

Three encoders of the same weights (GROUNDING_ENCODER, default MiniLM-L6) take turns, --reps times each, on the
same seeded sample of chunks of the `torch` package from site-packages:

- `fp32, chars`: what the pipeline ran before (fp32, batches sorted by character length) -- the baseline;
- `fp32, tokens`: fp32, texts tokenized once and batched by token count;
- `auto`: what ingest runs now (GROUNDING_ENCODER_PRECISION=auto: bf16 where the CPU has AMX/AVX512-BF16 and
  the one-time check passed, else fp32), batched by token count.

Then retrieval: CoSQA dev-500 (../shared/benchmarks/cosqa, real web queries over 6,267 functions, one file each)
ranked by vector alone with the fp32 and the auto encoder, MRR@10 of both and the paired bootstrap interval of
their difference, and the cosine between the two encoders' vectors of every CoSQA chunk.

    .venv/bin/python bench/encoder.py [--sample 1500] [--reps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SITE_PACKAGES, encoder_before  # noqa: E402  (bench/common.py and quality.py, beside this file)
from quality import K, cosqa_set, paired_interval, reciprocal_ranks  # noqa: E402


def chunk_texts(root: Path, rels: list[str], counter) -> tuple[list[str], list[str]]:
    """(embed text, path) of every chunk of these files, chunked as ingest chunks them."""
    from grounding.config import get_settings
    from grounding.index.chunking import chunk_file
    from grounding.index.sources import SourceFile, read_file

    settings = get_settings()
    texts, paths = [], []
    for rel in rels:
        f = read_file(root, rel, max_bytes=settings.max_file_bytes, max_line_length=settings.max_line_length)
        if isinstance(f, SourceFile):
            for c in chunk_file(f.path, f.data, f.language, max_tokens=settings.chunk_tokens, counter=counter):
                texts.append(c.embed_text)
                paths.append(rel)
    return texts, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=1500, help="torch chunks timed per encoder and repetition")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-cosqa", action="store_true", help="skip the retrieval check")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GROUNDING_HOME", tempfile.mkdtemp(prefix="grounding-bench-encoder-"))
    import torch

    from grounding.config import get_settings
    from grounding.index.embed import HFEncoder, bf16_is_fast

    path = get_settings().encoder
    baseline = encoder_before(path, device="cpu")
    fp32 = HFEncoder(path, device="cpu", precision="fp32")
    t = time.perf_counter()
    auto = HFEncoder(path, device="cpu", precision="auto")
    check_s = time.perf_counter() - t
    print(
        f"encoder {path}\ntorch {torch.__version__}, {torch.get_num_threads()} threads, bf16 units: "
        f"{bf16_is_fast('cpu')}; auto chose {auto.precision} (probe min cosine {auto.bf16_min_cosine}; "
        f"load and check {check_s:.2f} s)"
    )

    root = SITE_PACKAGES / "torch"
    rels = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))
    random.seed(0)
    texts, _ = chunk_texts(root, random.sample(rels, min(400, len(rels))), fp32.token_counter())
    random.seed(1)
    texts = random.sample(texts, min(args.sample, len(texts)))
    tokens = [len(ids) for ids in fp32.tokenizer(texts, truncation=True, max_length=fp32.max_tokens)["input_ids"]]
    print(f"{len(texts)} chunks of {len(rels)} torch files, {np.mean(tokens):.0f} tokens each on average")

    batch = get_settings().embed_batch_size
    arms = {"fp32, chars": baseline, "fp32, tokens": fp32, "auto": auto}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    vectors = {}
    baseline.embed(texts[:64], batch_size=batch), fp32.embed(texts[:64], batch_size=batch)  # warm oneDNN's kernels
    auto.embed(texts[:64], batch_size=batch)
    for rep in range(args.reps):
        for name, encoder in arms.items() if rep % 2 == 0 else reversed(arms.items()):
            t = time.perf_counter()
            vectors[name] = encoder.embed(texts, batch_size=batch)
            seconds[name].append(time.perf_counter() - t)
    best = {name: min(s) for name, s in seconds.items()}
    print(f"\n{'encoder':14}{'chunks/s':>10}{'x baseline':>12}   (best of {args.reps}; each run)")
    for name, s in seconds.items():
        runs = ", ".join(f"{len(texts) / x:.1f}" for x in s)
        print(f"{name:14}{len(texts) / best[name]:>10.1f}{best['fp32, chars'] / best[name]:>12.2f}   ({runs})")
    cosine = (vectors["auto"] * vectors["fp32, chars"]).sum(1)
    print(f"auto vs fp32 on these chunks: min cosine {cosine.min():.6f}, mean {cosine.mean():.6f}")
    figures = {
        "encoder": path,
        "auto_precision": auto.precision,
        "probe_min_cosine": auto.bf16_min_cosine,
        "chunks": len(texts),
        "chunks_per_s": {name: len(texts) / best[name] for name in arms},
        "runs_s": seconds,
        "ratio_vs_fp32_chars": {name: best["fp32, chars"] / best[name] for name in arms},
        "torch_min_cosine": float(cosine.min()),
    }

    if not args.no_cosqa:
        tree, questions = cosqa_set(Path(os.environ["GROUNDING_HOME"]) / "sets")
        files = sorted(p.name for p in tree.glob("*.py"))
        corpus, owners = chunk_texts(tree, files, fp32.token_counter())
        ranks = {}
        timed = {}
        for name, encoder in (("fp32", fp32), ("auto", auto)):
            t = time.perf_counter()
            docs = encoder.embed(corpus, batch_size=batch)
            timed[name] = time.perf_counter() - t
            vectors[name] = docs

            def rank(query: str, encoder=encoder, docs=docs) -> list[tuple[str, int, int]]:
                scores = docs @ encoder.embed_batch([query])[0]
                return [(owners[i], 0, 0) for i in np.argsort(-scores)[: K * 20]]  # bench/quality's spans

            ranks[name] = reciprocal_ranks(rank, questions)[0]
        mrr = {name: float(np.mean(r)) for name, r in ranks.items()}
        diff, low, high = paired_interval(ranks["auto"], ranks["fp32"])
        cos = (vectors["auto"] * vectors["fp32"]).sum(1)
        print(
            f"\nCoSQA dev-500, vector only, {len(corpus)} chunks: MRR@10 fp32 {mrr['fp32']:.4f}, auto {mrr['auto']:.4f}, "
            f"auto - fp32 {diff:+.4f} [95% paired bootstrap {low:+.4f}, {high:+.4f}] (target: within 0.005)"
        )
        print(
            f"  chunk vectors: min cosine {cos.min():.6f}, mean {cos.mean():.6f}; embedding the corpus took "
            f"{timed['fp32']:.0f} s in fp32, {timed['auto']:.0f} s auto ({timed['fp32'] / timed['auto']:.2f}x)"
        )
        figures["cosqa"] = {
            "chunks": len(corpus),
            "mrr@10": mrr,
            "auto_minus_fp32": [diff, low, high],
            "min_cosine": float(cos.min()),
            "embed_s": timed,
        }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
