"""What is left to gain on CoSQA dev-500 without its labels: the frozen MiniLM against cheap changes around it.

Function level over the 6,267 functions (no database; the ranking is exact inner product), MRR@10, each
variant paired with the frozen encoder over whole functions by a bootstrap 95% interval:
- documents seen as their docstring and signature words, or with the docstring cut out, and the best
  (max) or a weighted sum of those views' scores with the whole function's;
- pseudo-relevance feedback (Rocchio: the question vector plus a times the mean of its k first hits);
- questions with the word "python" removed (every function here is Python);
- BM25 (bm25s over identifier parts) added to the cosine with a weight (scores scaled by the best);
- with --finetune, MiniLM fine-tuned on the corpus's own text (docstring -> function without it, name
  words -> function with its name hidden; in-batch softmax, both towers shared, one epoch): ~8 minutes;
- with --encoder2 DIR, another local encoder (scripts/install_mpnet.sh's all-mpnet-base-v2) over whole
  functions, alone and averaged with MiniLM's cosine: ~4 minutes of embedding for mpnet.

    .venv/bin/pip install bm25s        # not a dependency of grounding
    python bench/cosqa_probe.py [--finetune] [--encoder2 models/all-mpnet-base-v2]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import BENCHMARKS, K, log, paired_interval  # noqa: E402

COSQA = BENCHMARKS / "cosqa"

_DOCSTRING = re.compile(r'("""|\'\'\')(.*?)(\1)', re.S)
_DEF = re.compile(r"def\s+(\w+)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_STOP = frozenset("the a an of to in is and or for on with how python by from as at be it this that".split())


def words(name: str) -> str:
    return " ".join(p.lower() for p in _PART.findall(name))


def views(code: str) -> dict[str, str]:
    """The whole function; its signature words and docstring; the function with its docstring cut out."""
    m = _DEF.search(code)
    name, args = (m.group(1), m.group(2)) if m else ("", "")
    doc = _DOCSTRING.search(code)
    arg_words = ", ".join(words(a.split("=")[0].split(":")[0].strip()) for a in args.split(",") if a.strip())
    text = " ".join(doc.group(2).split()) if doc else ""
    return {
        "whole": code,
        "signature+docstring": f"{words(name)} ({arg_words}). {text}".strip(),
        "no docstring": code.replace(doc.group(0), "") if doc else code,
    }


def lexical_tokens(text: str) -> list[str]:
    out = []
    for m in _IDENT.finditer(text):
        parts = [p.lower() for p in _PART.findall(m.group(0))]
        out += parts + ([m.group(0).lower()] if len(parts) > 1 else [])
    return [t for t in out if t not in _STOP]


def reciprocal_ranks(scores: np.ndarray, gold: np.ndarray) -> list[float]:
    gold_score = scores[np.arange(len(gold)), gold]
    rank = (scores > gold_score[:, None]).sum(1)
    return np.where(rank < K, 1.0 / (rank + 1), 0.0).tolist()


def training_pairs(codes: list[str]) -> list[tuple[str, str]]:
    """Docstring -> the function without it; else split name words -> the function with its name hidden."""
    pairs = []
    for code in codes:
        doc, m = _DOCSTRING.search(code), _DEF.search(code)
        if doc and len(doc.group(2).split()) >= 3:
            pairs.append((" ".join(doc.group(2).strip().split("\n\n")[0].split()), code.replace(doc.group(0), "")))
        elif m and len(_PART.findall(m.group(1))) >= 2:
            pairs.append((words(m.group(1)), code.replace(m.group(1), "func", 1)))
    return pairs


def finetuned(model_dir: str, codes: list[str], queries: list[str], *, batch: int = 32, lr: float = 2e-5):
    """(document vectors, question vectors) after one epoch of in-batch softmax on the corpus's own pairs."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir)

    def encode(texts: list[str], max_length: int):
        b = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = model(**b).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).to(out.dtype)
        return torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)

    pairs = training_pairs(codes)
    steps = len(pairs) // batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, (steps - s) / steps)
    )
    order = rng.sample(range(len(pairs)), len(pairs))
    started = time.monotonic()
    model.train()
    for step in range(steps):
        chosen = [pairs[i] for i in order[step * batch : (step + 1) * batch]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, d = encode([c[0] for c in chosen], 64), encode([c[1] for c in chosen], 192)
        logits = (q.float() @ d.float().T) / 0.05
        labels = torch.arange(len(chosen))
        loss = (
            torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
        ) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(), schedule.step(), optimizer.zero_grad()
    log(f"fine-tuned on {len(pairs)} pairs, {steps} steps of {batch}, {time.monotonic() - started:.0f} s")
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        docs = np.concatenate([encode(codes[i : i + 64], 256).float().numpy() for i in range(0, len(codes), 64)])
        qs = np.concatenate([encode(queries[i : i + 64], 64).float().numpy() for i in range(0, len(queries), 64)])
    return docs, qs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finetune", action="store_true", help="also fine-tune MiniLM on the corpus (~8 min)")
    parser.add_argument("--encoder2", help="a second local encoder directory, alone and averaged with MiniLM")
    args = parser.parse_args(argv)

    import bm25s

    from grounding.config import get_settings
    from grounding.index.embed import HFEncoder

    code_map = json.loads((COSQA / "code_idx_map.txt").read_text())
    codes = [""] * len(code_map)
    for code, i in code_map.items():
        codes[i] = code
    dev = json.loads((COSQA / "cosqa-retrieval-dev-500.json").read_text())
    gold = np.array([q["retrieval_idx"] for q in dev])
    queries = [q["doc"] for q in dev]

    encoder = HFEncoder(get_settings().encoder)
    started = time.monotonic()
    per_view = {k: [views(c)[k] for c in codes] for k in ("whole", "signature+docstring", "no docstring")}
    docs = {k: encoder.embed(texts, batch_size=64) for k, texts in per_view.items()}
    q = encoder.embed(queries)
    no_python = encoder.embed([re.sub(r"\bpython3?\b", " ", t, flags=re.I).strip() or t for t in queries])
    log(f"embedded {len(codes)} functions x 3 views and {len(queries)} questions in {time.monotonic() - started:.0f} s")

    whole, sig, nodoc = (q @ docs[k].T for k in ("whole", "signature+docstring", "no docstring"))
    bm25 = bm25s.BM25(k1=1.2, b=0.75)
    bm25.index([lexical_tokens(c) for c in codes], show_progress=False)
    lexical = np.stack([bm25.get_scores(lexical_tokens(t)) for t in queries])
    lexical = lexical / (lexical.max(1, keepdims=True) + 1e-9)

    rows = {
        "frozen MiniLM, whole function (baseline)": whole,
        "signature+docstring view": sig,
        "no-docstring view": nodoc,
        "max(whole, signature+docstring)": np.maximum(whole, sig),
        "whole + 0.3 x (other two views)": whole + 0.3 * sig + 0.3 * nodoc,
        "questions without 'python'": no_python @ docs["whole"].T,
        "BM25 alone (bm25s)": lexical,
    }
    for k, a in ((3, 0.3), (10, 0.5)):
        top = np.argsort(-whole, 1)[:, :k]
        fed = q + a * docs["whole"][top].mean(1)
        fed /= np.linalg.norm(fed, axis=1, keepdims=True)
        rows[f"pseudo-relevance feedback k={k} a={a}"] = fed @ docs["whole"].T
    for w in (0.1, 0.2, 0.3):
        rows[f"cosine + {w} x BM25"] = whole + w * lexical
    if args.encoder2:
        other = HFEncoder(args.encoder2)
        t = time.monotonic()
        second = other.embed(queries) @ other.embed(codes, batch_size=32).T
        log(f"{args.encoder2}: {len(codes)} functions embedded in {time.monotonic() - t:.0f} s")
        rows["second encoder alone (--encoder2)"] = second
        rows["mean of MiniLM's and the second encoder's cosine"] = (whole + second) / 2
    if args.finetune:
        tuned_docs, tuned_q = finetuned(get_settings().encoder, codes, queries)
        rows["MiniLM fine-tuned on the corpus (1 epoch)"] = tuned_q @ tuned_docs.T

    base = reciprocal_ranks(whole, gold)
    print(f"\nCoSQA dev-500, function level, MRR@{K}; difference to the baseline [paired bootstrap 95%]")
    print(f"| variant | MRR@{K} | difference |\n|---|---|---|")
    for name, scores in rows.items():
        rr = reciprocal_ranks(scores, gold)
        mean, lo, hi = paired_interval(rr, base)
        print(f"| {name} | {np.mean(rr):.3f} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] |")


if __name__ == "__main__":
    main()
