"""The default pipeline on traced models: every block fuses, and numerics match eager PyTorch
after tracing, after every pass, and in ONNX Runtime."""

import pytest
import torch

from cgc.ir import Graph
from cgc.models import TINY, build, example_inputs
from cgc.passes import DEFAULT_PIPELINE

UNFUSED = ("softmax", "erf", "tanh", "matmul", "rsqrt", "reduce_mean", "pow")
STAGES = ["trace", *DEFAULT_PIPELINE.split(","), "onnxruntime"]


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
def test_builtin_tiny_models_fuse_completely(name: str, default_pipeline_checked) -> None:
    config = TINY[name]
    model = build(name).eval()
    inputs = example_inputs(config, batch=2, seq_len=16)
    g, stages = default_pipeline_checked(model, inputs)
    assert stages == STAGES
    assert_fully_fused(g, config.n_layer)
    assert all(n.attrs["causal"] for n in g.nodes if n.op == "attention")
    scale = config.attn_scale
    assert all(abs(n.attrs["scale"] - scale) < 1e-6 for n in g.nodes if n.op == "attention")


class Logits(torch.nn.Module):
    """A Hugging Face causal LM returning only logits, without a KV cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Seeded non-trivial weights: GPT-2's init (zero biases, unit LayerNorm) hides mistakes."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return module


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(("activation", "approximate"), [("gelu", "none"), ("gelu_new", "tanh")])
def test_hugging_face_gpt2_fuses_completely(
    attn_implementation: str, activation: str, approximate: str, default_pipeline_checked
) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=30,
        n_head=3,
        vocab_size=101,
        n_positions=32,
        activation_function=activation,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    model = Logits(perturbed(transformers.GPT2LMHeadModel(config))).eval()
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    g, stages = default_pipeline_checked(model, (ids,))
    assert stages == STAGES
    assert_fully_fused(g, 2)
    assert [n.attrs for n in g.nodes if n.op == "attention"] == [
        {
            "num_heads": 3,
            "causal": True,
            "scale": pytest.approx(10**-0.5),
            "num_kv_heads": 3,
            "window": 0,
            "alibi_slopes": [],
        }
    ] * 2
    assert {n.attrs["approximate"] for n in g.nodes if n.op == "gelu"} == {approximate}
