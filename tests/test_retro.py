"""RETRO: chunked cross-attention's causality, cached decoding, the chunk grid and leakage filter, checkpoints,
and a tiny real training run over a real source tree with bits per byte, generation and citations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from grounding.errors import InvalidArgument
from grounding.models.retro import Retro, RetroCache, RetroConfig, lm_loss
from grounding.training.retro_data import ChunkGrid, batch_tensors, low_overlap_rows, neighbour_quality, shares_run
from tests.conftest import copy_tree

M = 4


def _tiny(**overrides) -> RetroConfig:
    base = dict(
        vocab_size=50,
        pad_id=0,
        d_model=32,
        n_layers=4,
        n_heads=4,
        max_seq_len=64,
        chunk_len=M,
        neighbours=2,
        retrieval_len=2 * M,
        cca_start=2,
        cca_every=2,
        enc_layers=2,
    )
    return RetroConfig(**{**base, **overrides})


def _inputs(b: int = 2, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, 50, (b, n), generator=g)
    neighbours = torch.randint(1, 50, (b, n // M, 2, 2 * M), generator=g)
    return idx, neighbours


def test_cca_layers_follow_the_paper_every_third_from_six():
    assert RetroConfig(vocab_size=10, n_layers=12).cca_layers == (5, 8, 11)  # layers 6, 9, 12
    assert _tiny().cca_layers == (1, 3)
    assert _tiny(use_cca=False).cca_layers == ()


@pytest.mark.parametrize("u", [0, 1, 2])
def test_changing_the_neighbours_of_chunk_u_changes_no_logit_before_its_last_token(u):
    torch.manual_seed(0)
    model = Retro(_tiny()).eval()
    idx, neighbours = _inputs()
    changed = neighbours.clone()
    changed[:, u] = torch.randint(1, 50, changed[:, u].shape)
    with torch.no_grad():
        diff = (model(idx, neighbours) - model(idx, changed)).abs().amax(-1)  # (B, n)
    last = u * M + M - 1
    assert diff[:, :last].max() == 0  # exactly: nothing before the last token of chunk u sees them
    assert diff[:, last : last + M].min() > 0  # the last token of chunk u and chunk u+1 do


def test_cca_queries_each_position_with_its_own_hidden_state_against_the_previous_chunks_neighbours():
    """Position p (p >= m-1) reads the neighbours of chunk (p - m + 1) // m with the query h[p] itself.

    The causality tests cannot see a one-position query shift (h[p-1] or h[p+1] as the query keeps
    every dependency inside the allowed window); this pins the query to the position it writes.
    """
    from grounding.models.retro import Attention, chunked_cross_attention

    torch.manual_seed(0)
    b, m, chunks, kr, d = 2, 4, 3, 5, 8
    n = m * chunks + 2  # a partial last chunk too
    norm, attention = torch.nn.LayerNorm(d), Attention(d, 2)
    h = torch.randn(b, n, d)
    encoded = torch.randn(b, chunks, kr, d)
    mask = torch.ones(b, chunks, kr, dtype=torch.bool)
    mask[1, 0, 3:] = False  # a padded neighbour: never attended
    with torch.no_grad():
        out = chunked_cross_attention(norm, attention, h, encoded, mask, chunk_len=m)
        assert out.shape == h.shape and out[:, : m - 1].abs().max() == 0, "the first m-1 positions read nothing"
        for p in range(m - 1, n):
            u = (p - m + 1) // m
            for row in range(b):
                keys = encoded[row, u][mask[row, u]][None]  # (1, real, d)
                expected = attention(norm(h[row, p])[None, None], keys)[0][0, 0]
                assert torch.allclose(out[row, p], expected, atol=1e-5), f"position {p} (chunk {u}), row {row}"


def test_the_first_chunk_has_no_neighbours_and_retrieval_off_matches_there():
    torch.manual_seed(0)
    model = Retro(_tiny()).eval()
    idx, neighbours = _inputs()
    with torch.no_grad():
        on, off = model(idx, neighbours), model(idx)
    assert torch.equal(on[:, : M - 1], off[:, : M - 1])
    assert not torch.allclose(on[:, M:], off[:, M:])


@pytest.mark.parametrize("rotary", [True, False])
def test_cached_decoding_reproduces_the_full_forward(rotary):
    torch.manual_seed(0)
    model = Retro(_tiny(rotary=rotary)).eval()
    idx, neighbours = _inputs(n=18)  # a partial last chunk too
    cache, outs = RetroCache(), []
    with torch.no_grad():
        full = model(idx, neighbours)
        outs.append(model(idx[:, :6], cache=_with(cache, neighbours, upto=6)))  # a prompt, then one by one
        for p in range(6, 18):
            outs.append(model(idx[:, p : p + 1], cache=_with(cache, neighbours, upto=p + 1)))
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def _with(cache: RetroCache, neighbours: torch.Tensor, *, upto: int) -> RetroCache:
    for u in range(upto // M):
        cache.neighbours.setdefault(u, neighbours[:, u])
    return cache


def _copy_accuracy(rotary: bool, *, steps: int, seed: int = 0) -> float:
    """Train a tiny RETRO where chunk u's neighbour is [chunk u; chunk u+1] of random tokens, so chunk u+1 can
    only be predicted by copying it from the neighbour; the share of those tokens then predicted right."""
    from grounding.models.retro import lm_loss

    torch.manual_seed(seed)
    vocab, m, n, b = 32, 8, 48, 16
    config = RetroConfig(
        vocab_size=vocab,
        pad_id=0,
        d_model=64,
        n_layers=2,
        n_heads=4,
        max_seq_len=n,
        chunk_len=m,
        neighbours=1,
        retrieval_len=2 * m,
        cca_start=2,
        cca_every=1,
        enc_layers=1,
        rotary=rotary,
    )
    model = Retro(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed + 1)

    def batch():
        x = torch.randint(1, vocab, (b, n + m), generator=g)
        neighbours = torch.stack([x[:, u * m : (u + 2) * m] for u in range(n // m)], 1)[:, :, None]  # (B, L, 1, r)
        return x[:, :n], x[:, 1 : n + 1], neighbours

    for _ in range(steps):
        idx, targets, neighbours = batch()
        loss = lm_loss(model(idx, neighbours), targets, ignore=-1) / targets.numel()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    idx, targets, neighbours = batch()
    with torch.no_grad():
        predicted = model(idx, neighbours).argmax(-1)
    return (predicted[:, m - 1 :] == targets[:, m - 1 :]).float().mean().item()  # positions >= m-1 can copy


def test_rotary_positions_in_cca_let_retro_copy_its_neighbours_continuation_within_a_small_budget():
    """With positions a query lines up with the neighbour token after its own (rotary, offset m-1), copying is
    learnt in tens of steps; with learned absolute positions only (the model before), not in the same budget."""
    assert _copy_accuracy(True, steps=60) > 0.9
    assert _copy_accuracy(False, steps=60) < 0.5


def test_a_checkpoint_saved_before_rotary_positions_loads_without_them(tmp_path):
    from grounding.models.checkpoint import load_retro, save_retro

    model = Retro(_tiny(rotary=False)).eval()
    save_retro(tmp_path / "old.pt", model, tokenizer="/tok", database=3, step=1)
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    del state["config"]["rotary"]  # as written before the field existed
    torch.save(state, tmp_path / "old.pt")
    again, _ = load_retro(tmp_path / "old.pt")
    assert again.config.rotary is False
    idx, neighbours = _inputs()
    with torch.no_grad():
        assert torch.equal(again(idx, neighbours), model(idx, neighbours))


def test_baseline_has_the_same_decoder_and_no_encoder():
    retro, base = Retro(_tiny()), Retro(_tiny(use_cca=False))
    assert base.encoder is None and all(b.cca is None for b in base.blocks)
    assert {n for n, _ in base.named_parameters()} < {n for n, _ in retro.named_parameters()}


def test_checkpoint_reloads_with_its_config(tmp_path):
    from grounding.models.checkpoint import load_retro, save_retro

    torch.manual_seed(0)
    model = Retro(_tiny(d_model=48)).eval()
    save_retro(tmp_path / "r.pt", model, tokenizer="/tok", database=3, step=9)
    again, state = load_retro(tmp_path / "r.pt")
    assert again.config == model.config and state["tokenizer"] == "/tok" and state["step"] == 9
    idx, neighbours = _inputs()
    with torch.no_grad():
        assert torch.equal(again(idx, neighbours), model(idx, neighbours))


def test_grid_batches_mask_padding_and_the_leakage_filter_uses_the_previous_chunks_neighbours():
    pad = 0
    tokens = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 14]])
    neighbours = np.zeros((4, 1, 8), dtype=np.int64)
    neighbours[0, 0, :6] = [7, 5, 6, 7, 8, 9]  # chunk 0's neighbour copies chunk 1 (which it predicts)
    neighbours[1, 0, :3] = [9, 1, 1]
    grid = ChunkGrid(np.arange(4), tokens, neighbours, ("a", "a", "a", "b"), pad)
    idx, targets, nb = batch_tensors(grid, [np.array([0, 1]), np.array([2, 3])])
    assert idx.tolist()[1] == [9, 10, 0, 0, 11, 12, 13, 14]
    assert targets.tolist()[1] == [10, 0, 0, 0, 12, 13, 14, 0]  # no target from or to padding
    assert nb.shape == (2, 2, 1, 8)
    assert shares_run(np.array([5, 6, 7, 8]), np.array([7, 5, 6, 7, 8, 9]), 4)
    assert not shares_run(np.array([5, 6, 7, 8]), np.array([5, 6, 1, 7, 8]), 3)
    keep = low_overlap_rows(grid, 2, threshold=4)
    assert keep.tolist() == [True, False, True, True]  # row 2 starts a sequence: no neighbours precede it
    # row 1 shares its 4 tokens with row 0's neighbour, whose 4-gram (5, 6, 7, 8) ends at its last token; row 3 none
    assert neighbour_quality(grid, 2, threshold=4) == {"chunks": 2, "share": 0.5, "copyable": 1 / 8}
    from grounding.training.retro_train import chunk_losses

    torch.manual_seed(0)
    config = RetroConfig(
        16,
        pad,
        d_model=16,
        n_layers=2,
        n_heads=2,
        max_seq_len=8,
        chunk_len=4,
        neighbours=1,
        retrieval_len=8,
        cca_start=2,
        cca_every=1,
        enc_layers=1,
    )
    model = Retro(config)
    nats, n_bytes, n_tokens = chunk_losses(
        model, grid, np.arange(16), chunks_per_sequence=2, retrieval=True, device="cpu"
    )
    # a target counts in the chunk it lies in: row 1 holds 5 (predicted at the end of row 0), 6, 7 and 8
    assert n_tokens.tolist() == [3, 4, 1, 3] and n_bytes.tolist() == [2 + 3 + 4, 5 + 6 + 7 + 8, 10, 12 + 13 + 14]
    with torch.no_grad():
        whole = lm_loss(model(idx, nb), targets, ignore=pad).item()
    assert abs(nats.sum() - whole) < 1e-3 * whole


def test_only_a_whole_long_chunk_copied_by_the_prompt_marks_the_file_being_completed():
    from types import SimpleNamespace

    from grounding.answer.completion import _copied

    tokenizer = SimpleNamespace(eos_id=0, decode=lambda ids: "".join(chr(96 + i % 26 + 1) for i in ids))
    long = SimpleNamespace(tokens=tuple(range(1, 41)) + (1, 2))
    text = "prompt: " + tokenizer.decode(list(range(1, 41))) + " ..."
    assert _copied(long, 40, tokenizer, text)
    assert not _copied(long, 40, tokenizer, "another prompt altogether")
    assert not _copied(SimpleNamespace(tokens=tuple(range(1, 30))), 40, tokenizer, text), "a file's short last chunk"
    assert not _copied(SimpleNamespace(tokens=(0,) + tuple(range(1, 40))), 40, tokenizer, text), "end of a file"
    short = SimpleNamespace(tokens=(1, 2, 3, 4))
    assert not _copied(short, 4, tokenizer, text), "four characters are in most prompts"


# --- a tiny real run ----------------------------------------------------------------------------------


def test_tiny_retro_trains_reports_bits_per_byte_and_completes_with_citations(
    engine, repo_name, hashing, tmp_path, capsys
):
    """One tiny real run (it is the slow part): training, bits per byte, then generation from it."""
    from grounding.index.ingest import ingest
    from grounding.index.retro_db import RetroDbConfig
    from grounding.training.retro_train import RetroTrainConfig, tiny_model, train_retro

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=hashing)
    report = train_retro(
        repo_name,
        model=tiny_model(1, 0, d_model=64, n_layers=4, n_heads=4, max_seq_len=256),
        train_config=RetroTrainConfig(
            steps=40, batch_size=4, chunks_per_sequence=4, lr=3e-3, warmup=5, log_every=1, vocab_size=1024
        ),
        db_config=RetroDbConfig(chunk_tokens=32, neighbours=2, encoder="hashing-64"),
        device="cpu",
    )
    repo = repo_name
    _check_training(repo, report)
    _check_completion(repo, report, capsys)


def _check_training(repo, report):
    from grounding.training.runs import training_metrics, training_runs

    steps = training_metrics(report.run_id, stage="retro")
    losses = [s["metrics"]["loss"] for s in steps]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert len(training_metrics(report.run_id, stage="baseline")) == 40
    bpb = report.bits_per_byte
    assert set(bpb) == {
        "retro_retrieval",
        "retro_no_retrieval",
        "retro_retrieval_low_overlap",
        "retro_no_retrieval_low_overlap",
        "baseline",
        "baseline_low_overlap",
    }
    assert all(0.5 < v < 9 for v in bpb.values()), bpb
    assert bpb["retro_retrieval"] != bpb["retro_no_retrieval"]
    run = training_runs(repo, kind="retro")[0]
    assert run.status == "complete" and run.metrics["bits_per_byte"] == bpb
    stored = training_metrics(report.run_id, stage="eval")[0]["metrics"]
    assert stored["retro_retrieval"] == pytest.approx(bpb["retro_retrieval"])


def _check_completion(repo, report, capsys):
    import grounding
    from grounding.cli import main

    prefix = "def merge_setting(request_setting, session_setting, dict_class=OrderedDict):\n" * 3
    result = grounding.complete(repo, prefix, max_new_tokens=40, path="sessions.py")
    assert result.tokens > 0 and result.checkpoint == report.checkpoint
    assert result.citations and all(c.path != "sessions.py" for c in result.citations)
    own = grounding.complete(repo, prefix, max_new_tokens=40, path="sessions.py", own_file=True)
    assert "sessions.py" in {c.path for c in own.citations}, "its indexed version is read when asked"
    with pytest.raises(InvalidArgument, match="give the path being completed"):
        grounding.complete(repo, prefix, own_file=True)
    assert all(c.start_line >= 1 and c.end_line >= c.start_line and c.snippet for c in result.citations)
    assert main(["complete", repo, "sessions.py:40", "--max-new-tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "[1] " in out
    assert main(["complete", repo, "no/such.py:3"]) == 1
    _check_completion_edges(repo, report)


def _check_completion_edges(repo, report):
    """The prompt's truncation, retrieval of the file being completed, and the database's chunk length."""
    import grounding
    from grounding.index import retro_db
    from grounding.index.lm_tokenizer import load_tokenizer
    from tests.conftest import package_tree

    database = retro_db.get_database(report.database)
    assert database.chunk_tokens == 32
    # More new tokens than the context holds: the prompt keeps its end (half the context), no error.
    long_prefix = (package_tree("requests") / "sessions.py").read_text()
    result = grounding.complete(repo, long_prefix, max_new_tokens=4096, path="sessions.py")
    assert 0 < result.tokens <= 256 - 128

    # Without `path`, the file whose chunks the prompt copies is not retrieved: its continuation is the answer.
    by_path: dict[str, list] = {}
    for chunk in retro_db.database_chunks(database, split="train"):
        by_path.setdefault(chunk.path, []).append(chunk)
    path, chunks = max(by_path.items(), key=lambda item: len(item[1]))
    assert len(chunks) >= 4
    prefix = "".join(c.text for c in chunks[:3])
    assert any(c.path == path for c in retro_db.retrieve(database, chunks[0].text, k=2)), "itself is nearest"
    # What generation reads: the window of the hit's file aligned to the retrieving chunk (here a suffix of it).
    hit = [nb for nb in retro_db.retrieve(database, chunks[1].text, k=4) if nb.chunk_id == chunks[1].id]
    pad = load_tokenizer(database.tokenizer).pad_id
    (window,) = retro_db.align(database, chunks[1].tokens[5:], hit, r=64, pad=pad)
    assert window.tokens == (*chunks[1].tokens[5:], *chunks[2].tokens, *chunks[3].tokens[:5])
    result = grounding.complete(repo, prefix, max_new_tokens=8)
    assert result.citations and all(c.path != path for c in result.citations), [c.path for c in result.citations]

    # BM25 over the LM's tokens: training's neighbours come from other train files; generation's exclude `path`.
    bm25 = retro_db.RetroDbConfig(chunk_tokens=32, neighbours=2, encoder="hashing-64", retriever="bm25")
    found = retro_db.neighbours(database, config=bm25)
    by_id = {c.id: c for c in retro_db.database_chunks(database)}
    assert sum(map(len, found.values())) > 1.5 * len(found)
    assert all(by_id[n].split == "train" and by_id[n].path != by_id[c].path for c, ns in found.items() for n in ns)
    top = retro_db.retrieve(database, "", k=3, retriever="bm25", tokens=chunks[1].tokens, train_only=False)
    assert top[0].chunk_id == chunks[1].id, "a chunk's own tokens find it first"
    others = retro_db.retrieve(
        database, "", k=3, retriever="bm25", tokens=chunks[1].tokens, train_only=False, exclude_paths=[path]
    )
    assert others and all(nb.path != path for nb in others)
    state = torch.load(report.checkpoint, weights_only=True)
    state["extra"] = {"retriever": "bm25"}  # a model trained with BM25 neighbours is served with them
    torch.save(state, Path(report.checkpoint).with_name("bm25.pt"))
    result = grounding.complete(
        repo, prefix, max_new_tokens=8, checkpoint=str(Path(report.checkpoint).with_name("bm25.pt"))
    )
    assert result.citations and all(c.path != path for c in result.citations)

    # A held-out file is read when serving: the prompt copying one of its chunks retrieves it.
    heldout = max(retro_db.database_chunks(database, split="heldout"), key=lambda c: len(set(c.text.split())))
    result = grounding.complete(repo, heldout.text, max_new_tokens=4, path="not/this.py")
    assert heldout.path in {c.path for c in result.citations}, [c.path for c in result.citations]

    # A newer database cut with another m is not the model's: completion keeps reading the m=32 one.
    other = retro_db.build_database(
        repo,
        load_tokenizer(database.tokenizer),
        config=retro_db.RetroDbConfig(chunk_tokens=16, neighbours=2, encoder="hashing-64"),
    )
    assert other.id > database.id and retro_db.latest_database(repo).id == other.id
    assert grounding.complete(repo, prefix, max_new_tokens=4).database == database.id


def test_retrofit_a_local_gpt2_on_a_real_tree_trains_only_what_it_inserted(engine, repo_name, hashing, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from grounding.index.ingest import ingest
    from grounding.index.lm_tokenizer import train_tokenizer
    from grounding.index.retro_db import RetroDbConfig
    from grounding.training.retro_train import RetroTrainConfig, train_retrofit
    from grounding.training.runs import training_metrics

    src = copy_tree("requests", tmp_path / "requests")
    ingest(str(src), name=repo_name, embedder=hashing)
    # A "local Hugging Face causal LM": a small GPT-2 built from a config, saved with its tokenizer.
    tokenizer = train_tokenizer([p.read_text() for p in sorted(src.rglob("*.py"))], vocab_size=512)
    base = tmp_path / "gpt2-small-local"
    tokenizer.save(base)
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=2, n_positions=256))
    lm.save_pretrained(base)
    before = {k: v.clone() for k, v in lm.state_dict().items()}

    report = train_retrofit(
        repo_name,
        str(base),
        train_config=RetroTrainConfig(steps=25, batch_size=4, chunks_per_sequence=4, lr=3e-3, warmup=2, log_every=1),
        db_config=RetroDbConfig(chunk_tokens=32, neighbours=2, encoder="hashing-64"),
        device="cpu",
    )
    losses = [s["metrics"]["loss"] for s in training_metrics(report.run_id, stage="retrofit")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    assert set(report.bits_per_byte) == {
        "retrofit_retrieval",
        "base_no_retrieval",
        "retrofit_retrieval_low_overlap",
        "base_no_retrieval_low_overlap",
    }
    trained = report.metrics["retrofit_train"]
    assert 0 < trained["trainable_parameters"] < trained["parameters"]
    state = torch.load(report.checkpoint, weights_only=False)
    assert state["config"]["base_path"] == str(base) and not any(k.startswith("base") for k in state["new_state"])
    # The base on disk was only read.
    again = GPT2LMHeadModel.from_pretrained(base)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in before.items())
