"""GPT module: names, meta construction, seeded init, causality, muP."""

import os

import pytest
import torch

from cgc.errors import ModelError
from cgc.models import CEREBRAS_GPT, GPT, TINY


def _rss_bytes() -> int:
    """Resident set size from /proc, so the test needs no psutil."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ids(config, batch=2, seq_len=10, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, seq_len), generator=g)


def test_module_names_match_hugging_face_gpt2() -> None:
    model = GPT(TINY["tiny-111m"])
    names = {n for n, _ in model.named_modules()}
    for name in (
        "transformer.wte",
        "transformer.wpe",
        "transformer.h.1.ln_1",
        "transformer.h.1.attn.c_attn",
        "transformer.h.1.attn.c_proj",
        "transformer.h.1.ln_2",
        "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.act",
        "transformer.h.1.mlp.c_proj",
        "transformer.ln_f",
        "lm_head",
    ):
        assert name in names
    assert isinstance(model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * 64, 64)
    assert model.lm_head.bias is None
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.ln_f.eps == 1e-5


def test_13b_on_meta_allocates_nothing() -> None:
    before = _rss_bytes()
    model = GPT(CEREBRAS_GPT["cerebras-gpt-13b"], device="meta")
    grown = _rss_bytes() - before
    assert all(p.is_meta for p in model.parameters())
    assert grown < 200 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
    assert model.lm_head.weight is model.transformer.wte.weight


def test_meta_model_propagates_shapes() -> None:
    model = GPT(CEREBRAS_GPT["cerebras-gpt-1.3b"], device="meta")
    ids = torch.zeros(1, 7, dtype=torch.int64, device="meta")
    assert model(ids).shape == (1, 7, 50257)


def test_initialisation_follows_gpt2() -> None:
    model = GPT(TINY["tiny-111m"], seed=0)
    block = model.transformer.h[0]
    assert torch.equal(block.ln_1.weight, torch.ones(64))
    assert torch.equal(block.ln_1.bias, torch.zeros(64))
    assert torch.equal(block.attn.c_attn.bias, torch.zeros(192))
    std = block.mlp.c_fc.weight.std().item()
    assert 0.018 < std < 0.022


def test_same_seed_same_weights_different_seed_different() -> None:
    config = TINY["tiny-256m"]
    a = GPT(config, seed=3).state_dict()
    b = GPT(config, seed=3).state_dict()
    c = GPT(config, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"])
    assert not torch.equal(
        a["transformer.h.1.mlp.c_proj.weight"], c["transformer.h.1.mlp.c_proj.weight"]
    )


def test_init_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    GPT(TINY["tiny-111m"], seed=9)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", [n for n in TINY if not n.endswith("-mup")])
def test_logits_shape_and_causality(name: str) -> None:
    config = TINY[name]
    model = GPT(config).eval()
    ids = _ids(config, seq_len=12)
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % config.vocab_size
    with torch.no_grad():
        logits = model(ids)
        logits_changed = model(changed)
    assert logits.shape == (2, 12, 97)
    # Later tokens must not influence earlier positions; they must influence their own.
    torch.testing.assert_close(logits[:, :8], logits_changed[:, :8], rtol=0, atol=0)
    assert not torch.allclose(logits[:, 8:], logits_changed[:, 8:])


def test_full_context_is_accepted_and_longer_is_rejected() -> None:
    config = TINY["tiny-111m"]
    model = GPT(config)
    assert model(_ids(config, seq_len=64)).shape == (2, 64, 97)
    with pytest.raises(ModelError, match="sequence length 65 exceeds the model's context of 64"):
        model(_ids(config, seq_len=65))


def test_rejects_ids_without_a_batch_dimension() -> None:
    with pytest.raises(ModelError, match=r"shape \[batch, seq_len\], got \(5,\)"):
        GPT(TINY["tiny-111m"])(torch.zeros(5, dtype=torch.int64))


def test_mup_changes_the_output_of_the_same_weights() -> None:
    plain = GPT(TINY["tiny-590m"], seed=5).eval()
    mup = GPT(TINY["tiny-590m-mup"], seed=5).eval()
    for (name, p), q in zip(plain.state_dict().items(), mup.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert mup.transformer.h[0].attn.scale == pytest.approx(1 / 32)
    assert plain.transformer.h[0].attn.scale == pytest.approx(1 / 32**0.5)
    ids = _ids(plain.config)
    with torch.no_grad():
        assert not torch.allclose(plain(ids), mup(ids), atol=1e-3)


def test_mup_matches_a_hand_computed_reference() -> None:
    """With one head and the scales applied by hand to a plain model, muP output is reproduced."""
    config = TINY["tiny-1.3b-mup"]
    mup = GPT(config, seed=2).eval()
    ids = _ids(config)
    with torch.no_grad():
        t = mup.transformer
        x = (t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))) * 10.0
        for block in t.h:
            h = block.ln_1(x)
            q, k, v = block.attn.c_attn(h).split(48, dim=-1)
            att = (q @ k.transpose(-2, -1)) / 48  # one head, d_head 48, muP 1/d_head
            causal = torch.ones(10, 10, dtype=torch.bool).tril()
            att = att.masked_fill(~causal, float("-inf")).softmax(-1)
            x = x + block.attn.c_proj(att @ v)
            x = x + block.mlp(block.ln_2(x))
        expected = mup.lm_head(t.ln_f(x)) * (256 / 48)
        torch.testing.assert_close(mup(ids), expected, rtol=1e-5, atol=1e-5)
