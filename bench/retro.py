"""RETRO on a real source tree: held-out bits per byte with retrieval, without, and for a baseline decoder.

An installed package with at least 1 MB of Python (default `_pytest`) is copied to a temporary
directory and ingested; `train_retro` trains a byte-level BPE tokenizer on it, builds the retrieval
database (64-token chunks, frozen-encoder embeddings, 2 neighbours from other train files), then
trains RETRO and a baseline decoder of the same size without CCA on the same sequences for the same
steps. Printed side by side: held-out bits per byte of RETRO with retrieval, RETRO with retrieval
off, the baseline, and the same three on the chunks sharing fewer than 8 contiguous tokens with
their neighbours; training tokens/s (and model FLOP utilisation on CUDA); generation tokens/s.

    python bench/retro.py --package _pytest --steps 400 --json retro.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import package_home  # noqa: E402  (bench/common.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="_pytest")
    parser.add_argument("--home", help="GROUNDING_HOME to use (and reuse); default: a temp dir")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunks-per-sequence", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--encoder", help="the frozen retrieval encoder (default: GROUNDING_ENCODER, MiniLM)")
    parser.add_argument("--device")
    parser.add_argument("--json")
    args = parser.parse_args()

    with package_home(args.package, args.home, prefix="retro-bench-") as (home, source):
        import grounding
        from grounding.config import get_settings
        from grounding.index.ingest import ingest
        from grounding.index.retro_db import RetroDbConfig
        from grounding.models.checkpoint import default_device
        from grounding.models.retro import RetroConfig
        from grounding.training.retro_train import RetroTrainConfig, tiny_model, train_retro

        device = args.device or default_device()
        code_bytes = sum(p.stat().st_size for p in source.rglob("*.py"))
        figures: dict = {"package": args.package, "python_bytes": code_bytes, "device": device, "seconds": {}}
        t = time.perf_counter()
        repo = args.package.strip("_")  # `_pytest` is not a repository name (one starts with a letter or digit)
        ingest(str(source), name=repo)
        figures["seconds"]["ingest"] = time.perf_counter() - t
        layers = args.layers
        model = (
            tiny_model(1, 0, d_model=args.d_model, n_layers=layers, max_seq_len=args.chunks_per_sequence * 64)
            if layers < 6
            else RetroConfig(vocab_size=1, d_model=args.d_model, n_layers=layers)
        )
        t = time.perf_counter()
        report = train_retro(
            repo,
            model=model,
            train_config=RetroTrainConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                chunks_per_sequence=args.chunks_per_sequence,
                lr=args.lr,
                min_lr=args.lr / 10,
                warmup=min(100, args.steps // 10),
                vocab_size=args.vocab_size,
            ),
            db_config=RetroDbConfig(encoder=args.encoder or get_settings().encoder),
            device=device,
        )
        figures["seconds"]["train_retro_job"] = time.perf_counter() - t
        figures["bits_per_byte"] = report.bits_per_byte
        figures["metrics"] = report.metrics
        m = report.metrics
        print(
            f"{args.package}: {code_bytes / 1e6:.2f} MB of Python; {m['train_chunks']} train and "
            f"{m['heldout_chunks']} held-out chunks of 64 tokens; "
            f"{m['low_overlap_fraction']:.0%} of held-out chunks pass the 8-token leakage filter"
        )
        b = report.bits_per_byte
        print(f"\nheld-out bits per byte after {args.steps} steps each ({device}):")
        print(f"{'':28}{'all chunks':>12}{'filtered':>12}")
        print(f"{'RETRO, retrieval on':28}{b['retro_retrieval']:>12.4f}{b['retro_retrieval_low_overlap']:>12.4f}")
        print(
            f"{'RETRO, retrieval off':28}{b['retro_no_retrieval']:>12.4f}{b['retro_no_retrieval_low_overlap']:>12.4f}"
        )
        print(f"{'baseline (no CCA)':28}{b['baseline']:>12.4f}{b['baseline_low_overlap']:>12.4f}")
        gain = 1 - b["retro_retrieval"] / b["retro_no_retrieval"]
        gain_f = 1 - b["retro_retrieval_low_overlap"] / b["retro_no_retrieval_low_overlap"]
        gain_b = 1 - b["retro_retrieval"] / b["baseline"]
        figures["reduction"] = {"vs_off": gain, "vs_off_filtered": gain_f, "vs_baseline": gain_b}
        print(f"retrieval lowers bits per byte by {gain:.1%} vs off ({gain_f:.1%} filtered), {gain_b:.1%} vs baseline")
        for name in ("retro_train", "baseline_train"):
            t = m[name]
            mfu = f", MFU {t['mfu_h100']:.1%} of an H100" if t.get("mfu_h100") else ""
            print(
                f"{name}: {t['tokens_per_s']:.0f} tokens/s, {t['parameters'] / 1e6:.2f}M parameters, "
                f"loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}, {t['seconds']:.0f}s{mfu}"
            )
        heldout = [p for p in sorted(source.rglob("*.py")) if _heldout(p.relative_to(source).as_posix())]
        prefix_file = max(heldout, key=lambda p: p.stat().st_size)
        rel = prefix_file.relative_to(source).as_posix()
        prefix = "".join(prefix_file.read_text().splitlines(keepends=True)[:60])
        grounding.complete(repo, prefix, max_new_tokens=8, path=rel)  # warm-up: loads the model
        result = grounding.complete(repo, prefix, max_new_tokens=128, path=rel)
        figures["generation"] = {
            "tokens": result.tokens,
            "seconds": result.seconds,
            "tokens_per_s": result.tokens_per_s,
            "citations": len(result.citations),
        }
        print(
            f"generation: {result.tokens} tokens in {result.seconds:.2f}s = {result.tokens_per_s:.1f} tokens/s "
            f"(retrieval from Postgres at each chunk boundary, {len(result.citations)} neighbours cited), "
            f"after the first 60 lines of held-out {rel}"
        )
        print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in figures["seconds"].items()))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


def _heldout(path: str) -> bool:
    from grounding.evaluation.datasets import split_of

    return split_of(path) == "heldout"


if __name__ == "__main__":
    sys.exit(main())
