"""Ingest throughput per stage on a real source tree, against the raw encoder on the same chunks.

    .venv/bin/python bench/ingest.py [--package networkx] [--git] [--glob '*.py'] [--every N] [--baseline] [--json out.json]

Copies an installed package (default networkx: 580 Python files; --glob and --every N keep every Nth matching file) to a temp
dir (--git: and commits it, so the git listing is what is read), ingests it into a fresh embedded Postgres
with the real encoder, then encodes the very same chunk texts with the bare encoder (the baseline:
embedding should be the only real cost), then times a re-ingest with nothing changed and one with a
single file changed. Prints files/s and chunks/s per stage and the ratios. --baseline also ingests the
same tree as a second repository with the pipeline's encoder as it was before (fp32, batches sorted by
characters), in the same process, and prints the ratio of chunks/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import encoder_before  # noqa: E402  (bench/common.py, beside this file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default="networkx", help="an installed package to ingest")
    parser.add_argument("--git", action="store_true", help="commit the copy to a git repository first")
    parser.add_argument("--glob", help="keep only the files whose name matches, e.g. '*.py'")
    parser.add_argument("--every", type=int, default=1, help="keep every Nth of those files (sorted)")
    parser.add_argument("--baseline", action="store_true", help="also ingest with the fp32, char-sorted encoder")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grounding-bench-ingest-"))
    os.environ["GROUNDING_HOME"] = str(work / "home")
    os.environ.pop("GROUNDING_DATABASE_URL", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from grounding import db
    from grounding.config import get_settings
    from grounding.index.chunking import chunk_file
    from grounding.index.embed import load_embedder
    from grounding.index.ingest import ingest
    from grounding.index.sources import list_files, open_source

    site_packages = next(Path(p) for p in site.getsitepackages() if p.endswith("site-packages"))
    src = work / args.package
    shutil.copytree(site_packages / args.package, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    kept = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if args.glob and not path.match(args.glob):
            path.unlink()
        else:
            if kept % args.every:
                path.unlink()
            kept += 1
    if args.git:
        for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qm", "x"]):
            subprocess.run(["git", *command], cwd=src, check=True)
    settings = get_settings()

    t = time.perf_counter()
    encoder = load_embedder(settings.encoder)  # loaded once, outside every timing below
    load_s = time.perf_counter() - t
    encoder.embed(["warm up the encoder"] * 8)
    db.get_engine()  # start the embedded server and migrate, outside the timings

    t = time.perf_counter()
    report = ingest(str(src), name=args.package)
    ingest_s = time.perf_counter() - t

    # The baseline: the same chunk texts through the bare encoder, same batch size and length sorting.
    listing = list_files(
        open_source(str(src), checkouts=work / "co", name="x"),
        max_bytes=settings.max_file_bytes,
        max_line_length=settings.max_line_length,
    )
    counter = encoder.token_counter()
    texts = [
        c.embed_text
        for f in listing.files
        for c in chunk_file(f.path, f.data, f.language, max_tokens=settings.chunk_tokens, counter=counter)
    ]
    unique = list(dict.fromkeys(texts))
    t = time.perf_counter()
    encoder.embed(unique, batch_size=settings.embed_batch_size)
    raw_s = time.perf_counter() - t

    t = time.perf_counter()
    again = ingest(str(src), name=args.package)
    nochange_s = time.perf_counter() - t
    target = sorted(src.rglob("*.py"))[len(report.seconds) % 7]
    target.write_text(target.read_text() + "\n\ndef bench_added_function(x):\n    return x + 1\n")
    t = time.perf_counter()
    one = ingest(str(src), name=args.package)
    onefile_s = time.perf_counter() - t

    files, chunks = report.files_changed, report.chunks_added
    before = None
    if args.baseline:
        old = encoder_before(settings.encoder)
        old.embed(["warm up the encoder"] * 8)
        if args.git:  # the changed file above, committed, so both ingests read the same tree
            subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qam", "y"], cwd=src, check=True)
        t = time.perf_counter()
        base = ingest(str(src), name=f"{args.package}-baseline", embedder=old)
        before = {"ingest_s": time.perf_counter() - t, "chunks": base.chunks_added, "stages_s": base.seconds}
    stages = {k: round(v, 3) for k, v in report.seconds.items()}
    figures = {
        "package": args.package,
        "files_indexed": files,
        "files_skipped": len(report.skipped),
        "chunks": chunks,
        "embeddings_computed": report.embeddings_computed,
        "encoder_load_s": round(load_s, 2),
        "ingest_s": round(ingest_s, 2),
        "stages_s": stages,
        "raw_encoder_s": round(raw_s, 2),
        "raw_encoder_texts": len(unique),
        "ratio_ingest_to_raw_encoder": round(ingest_s / raw_s, 3),
        "nochange_reingest_s": round(nochange_s, 3),
        "nochange_files_changed": again.files_changed,
        "onefile_reingest_s": round(onefile_s, 3),
        "onefile_embeddings_computed": one.embeddings_computed,
    }
    print(
        f"\n{args.package}: {files} files indexed ({len(report.skipped)} skipped), {chunks} chunks, "
        f"{report.embeddings_computed} embedded ({report.embeddings_reused} reused: identical chunks)"
    )
    print(f"{'stage':12} {'seconds':>9} {'files/s':>10} {'chunks/s':>10}")
    for stage, secs in report.seconds.items():
        print(
            f"{stage:12} {secs:9.2f} {files / secs if secs else float('inf'):10.1f} "
            f"{chunks / secs if secs else float('inf'):10.1f}"
        )
    print(f"{'ingest total':12} {ingest_s:9.2f} {files / ingest_s:10.1f} {chunks / ingest_s:10.1f}")
    print(f"{'raw encoder':12} {raw_s:9.2f} {'':10} {len(unique) / raw_s:10.1f}   (baseline, same texts)")
    print(f"ingest / raw encoder = {ingest_s / raw_s:.3f}   (target <= 1.3)")
    print(
        f"no-change re-ingest of {files} files: {nochange_s:.2f} s (target < 3 s); "
        f"one changed file: {onefile_s:.2f} s, {one.embeddings_computed} chunk(s) embedded"
    )
    print(f"encoder load (excluded above): {load_s:.2f} s; precision {getattr(encoder, 'precision', 'n/a')}")
    if before:
        then = before["chunks"] / before["ingest_s"]
        now = chunks / ingest_s
        print(
            f"before (fp32, char-sorted batches), same tree, same process: {before['ingest_s']:.1f} s, "
            f"{then:.1f} chunks/s; now {now:.1f} chunks/s = {now / then:.2f}x (target >= 2.0x)"
        )
        figures["baseline"] = {**before, "chunks_per_s": then, "ratio_now_to_before": now / then}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    db.reset()
    db.stop_embedded()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
