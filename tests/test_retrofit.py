"""RETRO-fitting tiny GPT-2 and LLaMA models built from configs: the retro-fitted model starts as the base,
only the inserted modules train, CCA is causal per chunk, and a short run learns to copy from neighbours."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.nn import functional as F

from grounding.models.retrofit import RetrofitConfig, RetroFitted, default_cca_layers, retrofit

M, K, V = 8, 2, 100  # chunk_len, neighbours, vocab


def _gpt2() -> transformers.PreTrainedModel:
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=V, n_positions=128)
    return transformers.GPT2LMHeadModel(config)


def _llama() -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(
        num_hidden_layers=4,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors this small only pay for a second thread's overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["gpt2", "llama"])
def base(request) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    return {"gpt2": _gpt2, "llama": _llama}[request.param]().eval()


def _config(base: transformers.PreTrainedModel, *, r: int = 2 * M) -> RetrofitConfig:
    return RetrofitConfig.from_base(base, chunk_len=M, neighbours=K, retrieval_len=r)


def _copy_task(batch: int, chunks: int, generator: torch.Generator):
    """Random tokens; chunk u's first neighbour is chunk u+1 (its continuation), the second is padding.

    -> idx (B, chunks*M), targets (B, chunks*M), neighbours (B, chunks, K, M).
    """
    tokens = torch.randint(1, V, (batch, chunks + 1, M), generator=generator)
    padding = torch.zeros_like(tokens[:, 1:])
    neighbours = torch.stack([tokens[:, 1:], padding], dim=2)
    flat = tokens.reshape(batch, -1)
    return flat[:, : chunks * M], flat[:, 1 : chunks * M + 1], neighbours


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # From the last token of chunk 0 on: the first M-1 positions never see neighbours.
    return F.cross_entropy(logits[:, M - 1 :].reshape(-1, V), targets[:, M - 1 :].reshape(-1))


# --- the config ---------------------------------------------------------------------------------


def test_default_cca_layers_are_every_third_from_layer_6_or_count_down_from_the_last():
    assert default_cca_layers(12) == (5, 8, 11)
    assert default_cca_layers(6) == (5,)
    assert default_cca_layers(32) == (5, 8, 11, 14, 17, 20, 23, 26, 29)
    assert default_cca_layers(4) == (0, 3)
    assert default_cca_layers(5) == (1, 4)
    assert default_cca_layers(1) == (0,)


def test_the_config_defaults_and_rejects_bad_layers(base):
    model = retrofit(base, _config(base))
    assert sorted(model.cca.keys(), key=int) == ["0", "3"]
    with pytest.raises(ValueError, match="cca_layers"):
        RetroFitted(base, RetrofitConfig.from_base(base, chunk_len=M, cca_layers=(1, 4)))


def test_an_unsupported_architecture_is_refused():
    neox = transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=V
        )
    )
    with pytest.raises(ValueError, match="gpt_neox"):
        retrofit(neox, RetrofitConfig.from_base(neox, chunk_len=M))


# --- the retro-fitted model ---------------------------------------------------------------------


def test_it_starts_as_the_base_model(base):
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(1, V, (2, 3 * M + 3), generator=g)  # a partial last chunk
    neighbours = torch.randint(1, V, (2, 3, K, 2 * M), generator=g)
    with torch.no_grad():
        expected = base(idx).logits
        model = retrofit(base, _config(base))
        assert torch.equal(model(idx, neighbours), expected)  # zero-initialised CCA output
        assert torch.equal(model(idx), expected)
        model.train()  # the frozen base keeps its dropout off
        assert not base.training
        assert torch.equal(model(idx, neighbours), expected)


def test_only_the_inserted_modules_train(base):
    model = retrofit(base, _config(base, r=M)).train()
    new = model.trainable_parameters()
    # Hand the optimiser whatever still requires grad: a base parameter left unfrozen would move.
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in new}
    assert {id(p) for p in new}.isdisjoint(id(p) for p in base.parameters())
    base_before = {name: p.detach().clone() for name, p in base.named_parameters()}
    new_before = [p.detach().clone() for p in new]
    optimiser = torch.optim.Adam(trainable, lr=1e-2)
    g = torch.Generator().manual_seed(2)

    def step() -> None:
        idx, targets, neighbours = _copy_task(4, 3, g)
        optimiser.zero_grad()
        _loss(model(idx, neighbours), targets).backward()
        optimiser.step()

    step()
    for name, p in base.named_parameters():
        assert p.grad is None and not p.requires_grad, name
        assert torch.equal(p, base_before[name]), name
    for name, cca in model.cca.items():
        assert cca.attn.out.weight.abs().sum() > 0, f"CCA {name} output did not move"
    # The zero output blocks every other gradient at first; after a second step all have moved.
    step()
    moved = [not torch.equal(p, before) for p, before in zip(new, new_before)]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all(moved), [name for name, ok in zip(names, moved) if not ok]
    assert all(torch.equal(p, base_before[name]) for name, p in base.named_parameters())


def test_layers_that_return_tuples_get_the_same_cca(base):
    # transformers 4.x decoder layers return (hidden, ...) tuples; the installed one returns a tensor.
    layers = base.transformer.h if hasattr(base, "transformer") else base.model.layers
    g = torch.Generator().manual_seed(6)
    idx = torch.randint(1, V, (1, 2 * M + 1), generator=g)
    neighbours = torch.randint(1, V, (1, 2, K, 2 * M), generator=g)
    model = retrofit(base, _config(base)).eval()
    with torch.no_grad():
        for cca in model.cca.values():
            torch.nn.init.normal_(cca.attn.out.weight, std=0.5)
        expected = model(idx, neighbours)
        assert not torch.equal(expected, base(idx).logits)
        model.remove_hooks()
        assert torch.equal(model(idx, neighbours), base(idx).logits)
        # Around the CCA hooks: one hook before makes each layer's output a tuple, one after unmakes it.
        wrap = [layer.register_forward_hook(lambda module, args, out: (out, None)) for layer in layers]
        relisted = RetroFitted(base, model.config)
        relisted.load_new_state_dict(model.new_state_dict())
        unwrap = [layer.register_forward_hook(lambda module, args, out: out[0]) for layer in layers]
        try:
            assert torch.equal(relisted(idx, neighbours), expected)
        finally:
            for hook in wrap + unwrap:
                hook.remove()


def test_a_checkpoint_rebuilds_from_the_config_and_the_new_state(base):
    model = retrofit(base, _config(base))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = model.new_state_dict()
    assert state and not any(key.startswith("base.") for key in state)
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in model.trainable_parameters())

    config = RetrofitConfig(**model.config.to_dict())
    rebuilt_base = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**config.base_config)
    )
    rebuilt_base.load_state_dict(base.state_dict())  # the caller's job: from config.base_path
    rebuilt = retrofit(rebuilt_base.eval(), config)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(1, V, (1, 2 * M), generator=g)
    neighbours = torch.randint(1, V, (1, 2, K, 2 * M), generator=g)
    with torch.no_grad():
        assert not torch.equal(rebuilt(idx, neighbours), model(idx, neighbours))
        rebuilt.load_new_state_dict(state)
        assert torch.equal(rebuilt(idx, neighbours), model(idx, neighbours))
    with pytest.raises(ValueError, match="missing"):
        rebuilt.load_new_state_dict({k: v for k, v in state.items() if not k.startswith("encoder.")})


def test_neighbours_of_chunk_u_reach_only_positions_from_its_last_token_on(base):
    model = retrofit(base, _config(base)).eval()
    with torch.no_grad():
        for cca in model.cca.values():
            torch.nn.init.normal_(cca.attn.out.weight, std=0.5)
    g = torch.Generator().manual_seed(4)
    n_chunks, n = 4, 4 * M + 3  # a partial fifth chunk, whose neighbours must never be read
    idx = torch.randint(1, V, (1, n), generator=g)
    neighbours = torch.randint(1, V, (1, n_chunks + 1, K, 2 * M), generator=g)
    with torch.no_grad():
        logits = model(idx, neighbours)
        assert torch.equal(model(idx), base(idx).logits)
        assert torch.equal(model(idx, torch.zeros_like(neighbours)), base(idx).logits)  # all padding
        for u in range(n_chunks + 1):
            changed = neighbours.clone()
            changed[:, u] = changed[:, u] % (V - 1) + 1  # every token another real one
            diff = (model(idx, changed) - logits).abs().amax(-1)[0]  # (n,)
            first = u * M + M - 1
            if u == n_chunks:
                assert torch.all(diff == 0), "an incomplete chunk's neighbours were read"
                continue
            assert torch.all(diff[:first] == 0), f"chunk {u}'s neighbours leaked before position {first}"
            assert diff[first] > 0, f"the last token of chunk {u} does not see its neighbours"


def test_a_short_run_learns_to_copy_the_next_chunk_from_the_neighbours(base):
    # A random init's logits span under a nat where a trained model's span many: give the head room.
    with torch.no_grad():
        base.get_output_embeddings().weight.mul_(5.0)
    model = retrofit(base, _config(base, r=M))
    g = torch.Generator().manual_seed(5)
    idx, targets, neighbours = _copy_task(32, 4, g)
    with torch.no_grad():
        base_loss = _loss(base(idx).logits, targets).item()
    optimiser = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        x, y, nb = _copy_task(8, 4, g)
        loss = _loss(model(x, nb), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        trained = _loss(model(idx, neighbours), targets).item()
        shuffled = _loss(model(idx, neighbours.roll(1, dims=0)), targets).item()  # another sequence's
    assert trained < base_loss - 0.4, (trained, base_loss)
    assert trained < shuffled - 0.4, f"the loss fell without reading the neighbours: {trained} vs {shuffled}"
