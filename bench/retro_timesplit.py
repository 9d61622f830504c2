"""RETRO on a time split of a real history: database at commit A, targets the files changed N commits later.

The way a copilot completes tomorrow's code. For each history (`../shared/benchmarks/repos/*.bundle`, outside
the project), on its first-parent line: B = HEAD, A = B~N. Training pairs come from before A only: database at
A-(j+1)N, targets the files changed up to A-jN, for j < windows. A tokenizer is trained on the files at A.
Neighbours (k per 64-token chunk) come from the database commit's files, the target's own older version included
unless --exclude-own-path: BM25 over the LM's tokens and their bigrams (grounding.index.token_bm25), or a dense
encoder (--retriever PATH, or auto: the better copyable share on a training pair). Each is the window of its file
aligned to the retrieving chunk (retro_db.aligned_window; --no-align: chunk + continuation as stored). Their
quality is printed before training ("share": chunks sharing 8+ tokens with a neighbour; "copyable": tokens whose
4-gram is in one).

Arms, each seed initialised from that seed (RETRO and the baseline alike): RETRO with retrieval, the same model
with retrieval off, with shuffled neighbours (another chunk's), and the decoder without CCA trained on the same
sequences. Printed: bits per byte on all target chunks and by overlap bucket (the share of a chunk's tokens
covered by 8-token runs of its neighbours; the paper's leakage filter is the first bucket), mean over seeds with
the spread, and the gain of retrieval over off and over the baseline.

    python bench/retro_timesplit.py --history click gin --seeds 0 1 --steps 250 --neighbours 1 --bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "repos"
EXTENSIONS = {"click": (".py",), "gin": (".go",), "express": (".js",)}
BUCKETS = (0.0, 0.125, 0.5, 0.875, 1.01)  # share of a chunk's tokens inside 8-token runs of its neighbours


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True).stdout


def files_at(repo: Path, commit: str, extensions: tuple[str, ...]) -> dict[str, str]:
    """path -> text of the commit's files with these extensions that grounding would index (sources.classify)."""
    from grounding.index.sources import SourceFile, classify

    listing = git(repo, "ls-tree", "-r", "-z", commit).split(b"\0")
    blobs = []
    for entry in listing:
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        mode, kind, sha = meta.split()
        name = path.decode("utf-8", "replace")
        if kind == b"blob" and mode != b"120000" and name.endswith(extensions):
            blobs.append((name, sha.decode()))
    out = subprocess.run(
        ["git", "cat-file", "--batch"],
        cwd=repo,
        input="".join(f"{sha}\n" for _, sha in blobs).encode(),
        capture_output=True,
        check=True,
    ).stdout
    texts, pos = {}, 0
    for name, _ in blobs:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        data = out[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1
        found = classify(name, data, max_bytes=400_000, max_line_length=1000)
        if isinstance(found, SourceFile) and not found.decode_errors:
            texts[name] = data.decode("utf-8")
    return texts


def changed(repo: Path, old: str, new: str, texts_new: dict[str, str]) -> list[str]:
    names = git(repo, "diff", "--name-only", "-z", old, new).decode("utf-8", "replace").split("\0")
    return sorted(n for n in names if n in texts_new)


class Pair:
    """Target chunks (changed files at the later commit) and their neighbours from the earlier commit."""

    def __init__(self, targets, database, retriever, k, m, pad, vocab, align: bool, exclude_own: bool):
        from grounding.index.retro_db import aligned_window
        from grounding.index.token_bm25 import TokenBM25
        from grounding.training.retro_data import build_grid

        t = time.perf_counter()
        if retriever == "bm25":
            index = TokenBM25([c.tokens for c in database], vocab_size=vocab, bigrams=True, ignore=(pad,))
            names = {p: i for i, p in enumerate(sorted({c.path for c in [*database, *targets]}))}
            found = index.search(  # with exclude_own, never the target's own file (as `complete` with `path`)
                [c.tokens for c in targets],
                k=k,
                groups=[names[c.path] for c in database] if exclude_own else None,
                query_groups=[names[c.path] for c in targets] if exclude_own else None,
            )
        else:
            found = dense_search(retriever, targets, database, k)
        self.search_s = time.perf_counter() - t
        streams: dict[str, list[int]] = {}
        starts = []
        for c in database:  # each file's tokens, and where each chunk starts in them
            stream = streams.setdefault(c.path, [])
            starts.append(len(stream))
            stream.extend(c.tokens)
        ids, tokens = {}, {}
        for t, hits in zip(targets, found):
            ids[t.id] = []
            for j, i in enumerate(hits):
                c, key = database[i], t.id * 16 + j  # a neighbour is per target when aligned to it
                stream = streams[c.path]
                tokens[key] = (
                    aligned_window(t.tokens, stream, starts[i], r=2 * m, pad=pad)
                    if align
                    else tuple(stream[starts[i] : starts[i] + 2 * m])
                )
                ids[t.id].append(key)
        self.grid = build_grid(targets, ids, tokens, chunk_len=m, neighbours=k, retrieval_len=2 * m, pad_id=pad)


def dense_search(encoder_path: str, targets, database, k: int) -> list[list[int]]:
    from grounding.index.embed import load_embedder

    embedder = load_embedder(encoder_path)
    db = embedder.embed([c.text for c in database], batch_size=64)
    q = embedder.embed([c.text for c in targets], batch_size=64)
    scores = q @ db.T
    return [list(np.argsort(-row)[:k]) for row in scores]


def cut(texts: dict[str, str], paths, tokenizer, m: int, start_id: int):
    from grounding.index.retro_db import RetroChunk, cut_file

    chunks = []
    for path in paths:
        for p, split, ordinal, tokens, text, lo, hi in cut_file(path, texts[path], tokenizer, m):
            chunks.append(RetroChunk(start_id + len(chunks), p, split, ordinal, tokens, text, lo, hi))
    return chunks


def concat(grids):
    from grounding.training.retro_data import ChunkGrid

    return ChunkGrid(
        np.concatenate([g.chunk_ids for g in grids]),
        np.concatenate([g.tokens for g in grids]),
        np.concatenate([g.neighbours for g in grids]),
        tuple(p for g in grids for p in g.paths),
        grids[0].pad_id,
    )


def shuffled(grid, seed: int):
    rng = np.random.default_rng(seed)
    return replace(grid, neighbours=grid.neighbours[rng.permutation(len(grid))])


def covered_share(grid, cps: int, threshold: int = 8) -> np.ndarray:
    """(N,) share of each chunk's tokens inside a `threshold`-token run it shares with the neighbours it is
    predicted with (those of the previous chunk of its sequence; 0 for a sequence's first chunk)."""
    pad = grid.pad_id
    out = np.zeros(len(grid))
    for row in range(len(grid)):
        if row % cps == 0:
            continue
        own = grid.tokens[row][grid.tokens[row] != pad]
        if len(own) < threshold:
            continue
        grams = set()
        for nb in grid.neighbours[row - 1]:
            nb = nb[nb != pad]
            grams.update(tuple(nb[i : i + threshold]) for i in range(len(nb) - threshold + 1))
        hit = np.zeros(len(own), dtype=bool)
        for i in range(len(own) - threshold + 1):
            if tuple(own[i : i + threshold]) in grams:
                hit[i : i + threshold] = True
        out[row] = hit.mean()
    return out


def run_history(name: str, args, device: str) -> dict:
    import torch

    from grounding.index.lm_tokenizer import train_tokenizer
    from grounding.models.retro import Retro, bits_per_byte
    from grounding.training.retro_data import neighbour_quality
    from grounding.training.retro_train import (
        RetroTrainConfig,
        chunk_losses,
        tiny_model,
        token_byte_lengths,
        train_model,
    )

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"retro-ts-{name}-"))
    repo = work / name
    subprocess.run(["git", "clone", "-q", str(BENCHMARKS / f"{name}.bundle"), str(repo)], check=True)
    line = git(repo, "rev-list", "--first-parent", "HEAD").decode().split()
    n = args.window
    commits = [line[j * n] for j in range(args.windows + 2)]  # B, A, A-N, ...: newest first
    ext = EXTENSIONS[name]
    texts = {c: files_at(repo, c, ext) for c in commits}
    b, a = commits[0], commits[1]
    tokenizer = train_tokenizer(list(texts[a].values()), vocab_size=args.vocab_size)
    pad, m, k, cps = tokenizer.pad_id, 64, args.neighbours, args.chunks_per_sequence

    def pair(old: str, new: str, start: int, retriever: str) -> Pair:
        targets = cut(texts[new], changed(repo, old, new, texts[new]), tokenizer, m, start)
        database = cut(texts[old], sorted(texts[old]), tokenizer, m, start + 1_000_000)
        return Pair(
            targets, database, retriever, k, m, pad, tokenizer.vocab_size, not args.no_align, args.exclude_own_path
        )

    from grounding.config import get_settings

    retriever = args.retriever
    encoder = args.encoder or get_settings().encoder
    quality = {}
    if retriever == "auto":  # chosen on the training pairs' neighbours, never on the evaluation pair
        for option in ("bm25", encoder):
            dev = pair(commits[2], commits[1], 0, option)
            quality[option] = neighbour_quality(dev.grid, cps)
        retriever = max(quality, key=lambda o: quality[o]["copyable"])
    train_pairs = [pair(commits[j + 1], commits[j], j * 10_000_000, retriever) for j in range(1, args.windows + 1)]
    train = concat([p.grid for p in train_pairs])
    test = pair(a, b, 0, retriever).grid
    q_train, q_test = neighbour_quality(train, cps), neighbour_quality(test, cps)
    print(
        f"\n{name}: B={b[:10]} A=B~{n}; {len(texts[a])} files at A; {len(train)} train chunks from {args.windows} "
        f"earlier windows, {len(test)} target chunks in {len(changed(repo, a, b, texts[b]))} changed files"
    )
    if quality:
        print(
            "  retriever chosen on the training pairs: "
            + ", ".join(f"{o}: share {q['share']:.1%}, copyable {q['copyable']:.1%}" for o, q in quality.items())
            + f" -> {retriever}"
        )
    print(
        f"  neighbours ({retriever}, k={k}): train share {q_train['share']:.1%}, copyable {q_train['copyable']:.1%}; "
        f"target share {q_test['share']:.1%}, copyable {q_test['copyable']:.1%}"
    )
    lengths = token_byte_lengths(tokenizer)
    share = covered_share(test, cps)
    buckets = [(lo, hi, (share >= lo) & (share < hi)) for lo, hi in zip(BUCKETS[:-1], BUCKETS[1:])]
    runs = []
    for seed in args.seeds:
        config = tiny_model(
            tokenizer.vocab_size,
            pad,
            d_model=args.d_model,
            n_layers=args.layers,
            max_seq_len=cps * m,
            chunk_len=m,
            neighbours=k,
            retrieval_len=2 * m,
        )
        train_config = RetroTrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            chunks_per_sequence=cps,
            lr=args.lr,
            min_lr=args.lr / 10,
            warmup=min(100, args.steps // 10),
            seed=seed,
            vocab_size=tokenizer.vocab_size,
            amp=args.bf16,
        )
        torch.manual_seed(seed)
        retro = Retro(config)
        torch.manual_seed(seed)
        baseline = Retro(replace(config, use_cca=False))
        t = time.perf_counter()
        fit_r = train_model(retro, train, train_config, device=device)
        fit_b = train_model(baseline, train, train_config, device=device)
        train_s = time.perf_counter() - t

        def losses(model, grid, retrieval):  # one pass; any subset of chunks is summed from it
            nats, n_bytes, _ = chunk_losses(
                model, grid, lengths, chunks_per_sequence=cps, retrieval=retrieval, device=device, amp=args.bf16
            )
            return nats, n_bytes

        per_arm = {
            "retrieval": losses(retro, test, True),
            "off": losses(retro, test, False),
            "shuffled": losses(retro, shuffled(test, seed), True),
            "baseline": losses(baseline, test, False),
        }
        arms = list(per_arm)

        def bpb(arm, keep=slice(None)):
            nats, n_bytes = per_arm[arm]
            return bits_per_byte(float(nats[keep].sum()), int(n_bytes[keep].sum()))

        result = {arm: bpb(arm) for arm in arms}
        result["buckets"] = {
            f"{lo:.3f}-{min(hi, 1):.3f}": {arm: bpb(arm, mask) for arm in arms}
            for lo, hi, mask in buckets
            if mask.sum()
        }
        result["train"] = {
            "retro_tokens_per_s": fit_r["tokens_per_s"],
            "baseline_tokens_per_s": fit_b["tokens_per_s"],
            "retro_loss": fit_r["last_loss"],
            "baseline_loss": fit_b["last_loss"],
            "seconds": train_s,
        }
        runs.append(result)
        print(
            f"  seed {seed}: "
            + ", ".join(f"{arm} {result[arm]:.4f}" for arm in arms)
            + f" bits/byte; trained {train_s:.0f}s (RETRO {fit_r['tokens_per_s']:.0f} tokens/s, "
            f"baseline {fit_b['tokens_per_s']:.0f})"
        )
    summary = summarise(runs, buckets)
    print(f"  mean of {len(runs)} seeds [min, max]:")
    for arm, (mean, lo, hi) in summary["arms"].items():
        print(f"    {arm:10} {mean:.4f} [{lo:.4f}, {hi:.4f}]")
    g = summary["gain"]
    print(
        f"  retrieval vs off: {g['vs_off'][0]:.1%} lower [{g['vs_off'][1]:.1%}, {g['vs_off'][2]:.1%}]; "
        f"vs baseline: {g['vs_baseline'][0]:.1%} [{g['vs_baseline'][1]:.1%}, {g['vs_baseline'][2]:.1%}]; "
        f"shuffled vs off: {g['shuffled_vs_off'][0]:+.1%}"
    )
    print("  by overlap bucket (share of a chunk's tokens in 8-token runs of its neighbours), mean bits/byte:")
    for bucket, row in summary["buckets"].items():
        print(
            f"    {bucket} ({row['chunks']:4d} chunks): "
            + ", ".join(f"{arm} {v:.4f}" for arm, v in row.items() if arm != "chunks")
        )
    return {
        "history": name,
        "retriever": retriever,
        "quality": {"train": q_train, "target": q_test, "choice": quality},
        "runs": runs,
        "summary": summary,
        "seconds": time.perf_counter() - started,
    }


def summarise(runs, buckets) -> dict:
    arms = ("retrieval", "off", "shuffled", "baseline")
    out = {
        "arms": {
            a: (float(np.mean([r[a] for r in runs])), min(r[a] for r in runs), max(r[a] for r in runs)) for a in arms
        }
    }

    def gain(a, b):
        per = [1 - r[a] / r[b] for r in runs]
        return float(np.mean(per)), min(per), max(per)

    out["gain"] = {
        "vs_off": gain("retrieval", "off"),
        "vs_baseline": gain("retrieval", "baseline"),
        "shuffled_vs_off": gain("shuffled", "off"),
    }
    out["buckets"] = {}
    for lo, hi, mask in buckets:
        key = f"{lo:.3f}-{min(hi, 1):.3f}"
        if key in runs[0]["buckets"]:
            out["buckets"][key] = {
                "chunks": int(mask.sum()),
                **{a: float(np.mean([r["buckets"][key][a] for r in runs])) for a in arms},
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", nargs="+", default=["click", "gin"], choices=sorted(EXTENSIONS))
    parser.add_argument("--window", type=int, default=50, help="N: commits between the database and the targets")
    parser.add_argument("--windows", type=int, default=4, help="training windows before A")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunks-per-sequence", type=int, default=8)
    parser.add_argument("--neighbours", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument(
        "--retriever", default="bm25", help="bm25, auto (bm25 or --encoder, by copyable share), or a local encoder path"
    )
    parser.add_argument("--encoder", help="the dense encoder `auto` compares with (default: GROUNDING_ENCODER)")
    parser.add_argument(
        "--no-align",
        action="store_true",
        help="neighbours as stored (chunk + continuation), not "
        "aligned to the retrieving chunk (retro_db.aligned_window)",
    )
    parser.add_argument(
        "--exclude-own-path",
        action="store_true",
        help="never a neighbour from the target's own "
        "file (its older version): what `complete` does when given `path`; training pairs alike",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in training and evaluation (AMX here)")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t = time.perf_counter()
    results = [run_history(name, args, args.device) for name in args.history]
    print(f"\n{time.perf_counter() - t:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
