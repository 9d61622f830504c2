"""What the encoder should see: the vector ranking alone over the same chunks, embedded from different texts.

Variants of a chunk's text (grounding's today is `context+code`: the path and enclosing signatures,
then the code):
- `context+code`: as ingest embeds it (records.Chunk.embed_text);
- `code`: the code alone, no context header;
- `context+code, split`: every identifier that splits on snake_case or camelCase written as its words
  (`getNodeAttributes` -> `get node attributes`), which MiniLM's WordPiece reads as English;
- `context+code+words`: the code as it is, then a line of the identifiers' words.
Questions are encoded as they are. Scored at file level (a file's best chunk) on the dev sets of
bench/quality.py, whose --home this reuses (CoSQA dev and the commit sets); every variant is paired
with today's by a bootstrap interval.

    python bench/encoder_text.py --home /tmp/qhome --sets cosqa,click,gin,express
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import K, by_file, dev_set, log, matches, paired_interval  # noqa: E402

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def split_words(text: str) -> str:
    def words(m: re.Match) -> str:
        parts = _PART.findall(m.group(0))
        return " ".join(p.lower() for p in parts) if len(parts) > 1 else m.group(0)

    return _IDENT.sub(words, text)


def identifier_words(text: str) -> str:
    seen: dict[str, None] = {}
    for m in _IDENT.finditer(text):
        parts = _PART.findall(m.group(0))
        if len(parts) > 1:
            seen.setdefault(" ".join(p.lower() for p in parts), None)
    return "; ".join(seen)


VARIANTS = {
    "context+code": lambda ctx, code: f"{ctx}\n{code}" if ctx else code,
    "code": lambda ctx, code: code,
    "context+code, split": lambda ctx, code: split_words(f"{ctx}\n{code}" if ctx else code),
    "context+code+words": lambda ctx, code: (f"{ctx}\n{code}" if ctx else code) + "\n" + identifier_words(code),
}


def chunks_of(repo: str) -> list[tuple[tuple[str, int, int], str, str]]:
    import sqlalchemy as sa

    from grounding import db

    with db.get_engine().connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.path, c.start_line, c.end_line, c.context, c.text FROM chunks c "
                "JOIN files f ON f.id = c.file_id JOIN repositories r ON r.id = f.repo_id "
                "WHERE r.name = :n AND f.snapshot_id <= r.current_snapshot_id ORDER BY c.id"
            ),
            {"n": repo},
        ).all()
    return [((p, s, e), ctx, text) for p, s, e, ctx, text in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--sets", default="cosqa,click,gin,express")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["GROUNDING_HOME"] = args.home
    import numpy as np

    from grounding import db
    from grounding.config import get_settings, reset_settings
    from grounding.index.embed import load_embedder

    reset_settings()
    embedder = load_embedder(get_settings().encoder)
    work = Path(args.home) / "sets"
    results: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    try:
        for name in args.sets.split(","):
            repo, questions = dev_set(name, work)
            chunks = chunks_of(repo)
            spans = [sp for sp, _, _ in chunks]
            queries = np.asarray(embedder.embed([q for q, _ in questions], batch_size=64))
            for variant, make in VARIANTS.items():
                t = time.perf_counter()
                matrix = np.asarray(embedder.embed([make(ctx, code) for _, ctx, code in chunks], batch_size=32))
                rr = []
                for qv, (_, gold) in zip(queries, questions):
                    ranked = by_file([spans[i] for i in np.argsort(-(matrix @ qv))[: K * 10]])
                    rank = next((i for i, hit in enumerate(ranked[:K], 1) if matches(hit, gold)), 0)
                    rr.append(1 / rank if rank else 0.0)
                results[variant][name] = rr
                log(f"{name} {variant}: {len(chunks)} chunks in {time.perf_counter() - t:.0f}s, MRR {np.mean(rr):.3f}")
    finally:
        db.reset()
        db.stop_embedded()
    sets = list(results["context+code"])
    print(f"{'variant':24}" + "".join(f"{n:>26}" for n in sets))
    for variant, per_set in results.items():
        cells = []
        for n in sets:
            mrr = sum(per_set[n]) / len(per_set[n])
            if variant == "context+code":
                cells.append(f"{mrr:>26.3f}")
            else:
                d, lo, hi = paired_interval(per_set[n], results["context+code"][n])
                cells.append(f"{mrr:>7.3f} {d:+.3f} [{lo:+.3f},{hi:+.3f}]")
        print(f"{variant:24}" + "".join(cells))


if __name__ == "__main__":
    main()
