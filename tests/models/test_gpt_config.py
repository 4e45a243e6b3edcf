"""GPTConfig: the published Cerebras-GPT table, analytic parameter counts, muP scales."""

import math

import pytest

from cgc.errors import ModelError
from cgc.models import CEREBRAS_GPT, GPT, TINY, GPTConfig

# size: (layers, d_model, heads, d_head, d_ffn), Dey et al. 2023 table.
TABLE = {
    "111m": (10, 768, 12, 64, 3072),
    "256m": (14, 1088, 17, 64, 4352),
    "590m": (18, 1536, 12, 128, 6144),
    "1.3b": (24, 2048, 16, 128, 8192),
    "2.7b": (32, 2560, 32, 80, 10240),
    "6.7b": (32, 4096, 32, 128, 16384),
    "13b": (40, 5120, 40, 128, 20480),
}

PARAMETERS = {
    "111m": 111_050_496,
    "256m": 255_977_024,
    "590m": 590_310_912,
    "1.3b": 1_315_723_264,
    "2.7b": 2_651_553_280,
    "6.7b": 6_658_404_352,
    "13b": 12_853_386_240,
}


def test_names_are_the_seven_sizes_and_their_mup_twins() -> None:
    sizes = [f"cerebras-gpt-{s}" for s in TABLE]
    assert list(CEREBRAS_GPT) == sizes + [f"{n}-mup" for n in sizes]
    assert list(TINY) == [f"tiny-{s}" for s in TABLE] + [f"tiny-{s}-mup" for s in TABLE]


@pytest.mark.parametrize("size", TABLE)
def test_table_values(size: str) -> None:
    for name in (f"cerebras-gpt-{size}", f"cerebras-gpt-{size}-mup"):
        c = CEREBRAS_GPT[name]
        assert (c.n_layer, c.n_embd, c.n_head, c.d_head, c.n_inner) == TABLE[size]
        assert (c.vocab_size, c.n_positions, c.layer_norm_epsilon) == (50257, 2048, 1e-5)
        assert c.mup == name.endswith("-mup")


@pytest.mark.parametrize("name", list(CEREBRAS_GPT) + list(TINY))
def test_num_parameters_matches_the_module(name: str) -> None:
    config = {**CEREBRAS_GPT, **TINY}[name]
    model = GPT(config, device="meta")
    # parameters() yields the tied wte/lm_head weight once.
    assert config.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", TABLE)
def test_num_parameters_exact(size: str) -> None:
    assert CEREBRAS_GPT[f"cerebras-gpt-{size}"].num_parameters() == PARAMETERS[size]
    assert CEREBRAS_GPT[f"cerebras-gpt-{size}-mup"].num_parameters() == PARAMETERS[size]


def test_111m_is_about_111m() -> None:
    assert 1.0e8 < CEREBRAS_GPT["cerebras-gpt-111m"].num_parameters() < 1.3e8


def test_standard_scales() -> None:
    c = CEREBRAS_GPT["cerebras-gpt-2.7b"]
    assert c.attn_scale == pytest.approx(1 / math.sqrt(80))
    assert c.output_logits_scale == 1.0


def test_mup_scales() -> None:
    c = CEREBRAS_GPT["cerebras-gpt-2.7b-mup"]
    assert c.attn_scale == pytest.approx(1 / 80)
    assert c.output_logits_scale == pytest.approx(256 / 2560)
    assert c.embeddings_scale == 10.0
    assert CEREBRAS_GPT["cerebras-gpt-111m-mup"].output_logits_scale == pytest.approx(1 / 3)


def test_tiny_configs_are_small_and_vary_the_head_layout() -> None:
    plain = {n: c for n, c in TINY.items() if not c.mup}
    for c in plain.values():
        assert c.n_layer == 2 and 32 <= c.n_embd <= 64 and c.n_inner == 4 * c.n_embd
        assert (c.vocab_size, c.n_positions) == (97, 64)
    assert [c.d_head for c in plain.values()] == [16, 16, 32, 48, 10, 8, 12]
    assert [c.n_head for c in plain.values()] == [4, 3, 2, 1, 4, 8, 5]


def test_heads_must_divide_width() -> None:
    with pytest.raises(ModelError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        GPTConfig(n_layer=1, n_embd=30, n_head=4, n_inner=120)


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ModelError, match="GPTConfig.n_layer must be >= 1, got 0"):
        GPTConfig(n_layer=0, n_embd=32, n_head=4, n_inner=128)
