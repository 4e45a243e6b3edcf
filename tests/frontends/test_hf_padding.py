"""Hugging Face GPT-2 called with a padding attention_mask: it traces, fuses and runs.

transformers builds the 4-D mask from the 2-D one with advanced indexing (aten.index.Tensor).
Eager adds where(mask, 0, finfo.min) to the scores; sdpa hands the bool mask to SDPA. Under
left padding the padding queries see no key: eager then averages v evenly over every key and
torch SDPA outputs zeros. cgc reproduces both, so every position is compared, padding too.
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cgc.driver import compile_graph, run_passes, trace
from cgc.ir import Graph, interpret

N_LAYER = 2
IDS = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
MASKS = {
    "left-padded": torch.tensor([[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]]),
    "unpadded": torch.ones(2, 8, dtype=torch.long),
}


class PaddedGPT2(GPT2LMHeadModel):
    """GPT-2 returning only the logits, without a KV cache, taking an attention mask."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (
            super()
            .forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            .logits
        )


def padded_gpt2(attn_implementation: str) -> PaddedGPT2:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=N_LAYER,
        n_embd=32,
        n_head=4,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn_implementation,
    )
    return PaddedGPT2(config).eval()


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def compiled(request) -> tuple[PaddedGPT2, Graph, dict]:
    """The model, its traced graph and every way cgc runs it (traced once, fused once)."""
    model = padded_gpt2(request.param)
    traced = trace(model, (IDS, MASKS["left-padded"]))
    fused = run_passes(traced.copy(), "default")
    runs = {
        "traced": lambda *inputs: interpret(traced, *inputs),
        "interpreter": lambda *inputs: interpret(fused, *inputs),
        "onnxruntime": compile_graph(fused.copy(), "onnxruntime").run,
        "cerebras": compile_graph(fused.copy(), "cerebras", target="fabric:32x32").run,
    }
    return model, fused, runs


def test_every_layer_fuses_with_the_padding_mask(compiled) -> None:
    model, fused, _ = compiled
    counts = fused.op_counts()
    assert {op: counts.get(op, 0) for op in ("attention", "gelu", "layer_norm", "linear")} == {
        "attention": N_LAYER,
        "gelu": N_LAYER,
        "layer_norm": 2 * N_LAYER + 1,
        "linear": 4 * N_LAYER + 1,
    }
    assert not {"softmax", "erf", "tanh", "matmul"} & set(counts), counts
    attentions = [n for n in fused.nodes if n.op == "attention"]
    masks = {n.inputs[3] for n in attentions}
    assert len(masks) == 1  # one mask, built once from the input, for all layers
    (mask,) = masks
    if model.config._attn_implementation == "sdpa":
        # where(padding & causal, s, -inf): the causal conjunct becomes the attr, the padding
        # one the [batch, 1, 1, k] mask
        assert all(n.attrs["causal"] for n in attentions)
        assert str(mask.type) == "f32[2,1,1,8]"
    else:
        # 0 / finfo.min added: a fully padded query attends evenly to every key, so the causal
        # part stays in the [batch, 1, q, k] mask
        assert all(not n.attrs["causal"] for n in attentions)
        assert str(mask.type) == "f32[2,1,8,8]"
    assert mask.producer.op == "where"


@pytest.mark.parametrize("backend", ["traced", "interpreter", "onnxruntime", "cerebras"])
@pytest.mark.parametrize("padding", sorted(MASKS))
def test_matches_eager_at_every_position(compiled, padding: str, backend: str) -> None:
    model, _, runs = compiled
    mask = MASKS[padding]
    with torch.no_grad():
        want = model(IDS, mask)
    (got,) = runs[backend](IDS, mask)
    assert got.isfinite().all()
    assert (got - want).abs().max().item() <= 1e-4
