"""The default pipeline on traced models: every block fuses, numerics match eager PyTorch."""

import pytest
import torch

from cgc.frontends import trace
from cgc.ir import Graph, interpret
from cgc.models import TINY, build, example_inputs
from cgc.passes import run_passes

UNFUSED = ("softmax", "erf", "tanh", "matmul", "rsqrt", "reduce_mean", "pow")


def assert_fully_fused(g: Graph, n_layer: int) -> None:
    counts = g.op_counts()
    fused = {op: counts.get(op, 0) for op in ("attention", "gelu", "layer_norm", "linear")}
    assert fused == {
        "attention": n_layer,
        "gelu": n_layer,
        "layer_norm": 2 * n_layer + 1,
        "linear": 4 * n_layer + 1,
    }
    assert not set(UNFUSED) & set(counts), counts


@pytest.mark.parametrize("name", sorted(TINY))
def test_builtin_tiny_models_fuse_completely(name: str) -> None:
    config = TINY[name]
    model = build(name).eval()
    inputs = example_inputs(config, batch=2, seq_len=16)
    g = trace(model, inputs)
    run_passes(g, "default", verify_each=True)
    assert_fully_fused(g, config.n_layer)
    assert all(n.attrs["causal"] for n in g.nodes if n.op == "attention")
    scale = config.attn_scale
    assert all(abs(n.attrs["scale"] - scale) < 1e-6 for n in g.nodes if n.op == "attention")
    with torch.no_grad():
        want = model(*inputs)
    (got,) = interpret(g, *inputs)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


class Logits(torch.nn.Module):
    """A Hugging Face causal LM returning only logits, without a KV cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_hugging_face_gpt2_fuses_completely(attn_implementation: str) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=101,
        n_positions=32,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    model = Logits(transformers.GPT2LMHeadModel(config)).eval()
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    g = trace(model, (ids,))
    run_passes(g, "default", verify_each=True)
    assert_fully_fused(g, 2)
    assert [n.attrs for n in g.nodes if n.op == "attention"] == [
        {"num_heads": 4, "causal": True, "scale": pytest.approx(8**-0.5)}
    ] * 2
    assert {n.attrs["approximate"] for n in g.nodes if n.op == "gelu"} == {"tanh"}
    with torch.no_grad():
        want = model(ids)
    (got,) = interpret(g, ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
