"""GPT code as people write it fuses completely under the default pipeline, numerics intact.

The models are tests/zoo's nanoGPT and minGPT styles (see their docstrings), in eval mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo import mingpt, nanogpt

from cgc.ir import Graph
from cgc.passes import DEFAULT_PIPELINE

STAGES = ["trace", *DEFAULT_PIPELINE.split(","), "onnxruntime"]
LEFTOVERS = ("softmax", "erf", "tanh", "matmul", "pow", "reduce_mean")


def make_config(style, n_layer: int, n_head: int, n_embd: int, **options):
    """The style's config with dropout switched on: eval mode must drop it."""
    if style is mingpt:
        options.update(embd_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1)
    else:
        options.update(dropout=0.1)
    return style.GPTConfig(n_layer, n_head, n_embd, **options)


class Logits(nn.Module):
    """The logits of a model returning (logits, loss): the tests' single output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]


# -- tests --------------------------------------------------------------------------------------

# (n_layer, n_head, n_embd, seq): one head; d_head 8; d_head 10 and 6 (not powers of two); a
# sequence as long as the block, where the mask buffer is used unsliced.
SHAPES = [(1, 1, 8, 12), (2, 4, 32, 12), (3, 3, 30, 16), (2, 5, 30, 9)]


def shape_id(shape: tuple[int, int, int, int]) -> str:
    n_layer, n_head, n_embd, seq = shape
    return f"L{n_layer}-H{n_head}-d{n_embd // n_head}-T{seq}"


def randomized(model: nn.Module) -> nn.Module:
    """Seeded noise on every weight, so LayerNorm scales and biases are not 1 and 0; eval mode
    turns dropout off."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def token_ids(config, seq: int) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randint(0, config.vocab_size, (2, seq), generator=generator),)


def assert_fully_fused(g: Graph, config, approximate: str) -> None:
    counts = g.op_counts()
    fused = {op: counts.get(op, 0) for op in ("attention", "gelu", "layer_norm")}
    n = config.n_layer
    assert fused == {"attention": n, "gelu": n, "layer_norm": 2 * n + 1}, counts
    assert not set(LEFTOVERS) & set(counts), counts
    d_head = config.n_embd // config.n_head
    assert [n.attrs for n in g.nodes if n.op == "attention"] == [
        {
            "num_heads": config.n_head,
            "causal": True,
            "scale": pytest.approx(d_head**-0.5),
            "num_kv_heads": config.n_head,
            "window": 0,
            "alibi_slopes": [],
        }
    ] * n
    assert [n.attrs for n in g.nodes if n.op == "gelu"] == [{"approximate": approximate}] * n


@pytest.mark.parametrize("flash", [True, False], ids=["sdpa", "masked_fill"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_nanogpt_fuses_completely(shape, flash: bool, default_pipeline_checked) -> None:
    n_layer, n_head, n_embd, seq = shape
    config = make_config(nanogpt, n_layer, n_head, n_embd, flash=flash)
    torch.manual_seed(0)
    model = randomized(Logits(nanogpt.GPT(config)))
    g, stages = default_pipeline_checked(model, token_ids(config, seq))
    assert stages == STAGES
    assert_fully_fused(g, config, approximate="none")
    assert g.op_counts()["linear"] == 4 * n_layer + 1


def test_nanogpt_without_biases_fuses_completely(default_pipeline_checked) -> None:
    config = make_config(nanogpt, 2, 4, 32, bias=False, flash=False)
    torch.manual_seed(0)
    model = randomized(Logits(nanogpt.GPT(config)))
    g, stages = default_pipeline_checked(model, token_ids(config, 12))
    assert stages == STAGES
    assert_fully_fused(g, config, approximate="none")
    assert all(len(n.inputs) == 2 for n in g.nodes if n.op in ("linear", "layer_norm"))


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_mingpt_fuses_completely(shape, default_pipeline_checked) -> None:
    n_layer, n_head, n_embd, seq = shape
    config = make_config(mingpt, n_layer, n_head, n_embd)
    torch.manual_seed(0)
    model = randomized(Logits(mingpt.GPT(config)))
    g, stages = default_pipeline_checked(model, token_ids(config, seq))
    assert stages == STAGES
    assert_fully_fused(g, config, approximate="tanh")
    assert g.op_counts()["linear"] == 4 * n_layer + 1
