"""Shared helpers: one-node graphs from IR text, and a fused GPT graph built by hand."""

import math
from collections.abc import Callable

import pytest
import torch

from cgc.ir import Graph, Node, TensorType, parse


def _one_node(body: str, inputs: str = "", params: str = "") -> Node:
    """The single node of `graph @g(inputs) { params; body; return %y }`."""
    text = f"graph @g({inputs}) {{\n{params}  {body}\n  return %y\n}}\n"
    return parse(text).nodes[-1]


@pytest.fixture
def one_node() -> Callable[..., Node]:
    """Parse a one-node graph and return the node."""
    return _one_node


def _fused_gpt(
    layers: int = 2, d: int = 64, heads: int = 4, vocab: int = 100, seq: int = 16, batch: int = 1
) -> Graph:
    """A GPT-2 graph as the fusion passes leave it: embedding, layer_norm, linear, slice,
    attention, gelu, add; tied output projection; seeded random weights."""
    g = Graph("gpt")
    gen = torch.Generator().manual_seed(0)

    def param(name: str, shape: tuple[int, ...], fill: float | None = None):
        data = torch.randn(shape, generator=gen) * 0.02 if fill is None else torch.full(shape, fill)
        return g.add_param(name, TensorType(shape, "f32"), data)

    def norm(x, name: str):
        return g.call("layer_norm", x, param(f"{name}.w", (d,), 1.0), param(f"{name}.b", (d,), 0.0))

    ids = g.add_input("ids", TensorType((batch, seq), "i64"))
    positions = torch.arange(seq).expand(batch, seq).clone()
    pos = g.add_param("pos", TensorType((batch, seq), "i64"), positions)
    wte = param("wte", (vocab, d))
    x = g.call(
        "add", g.call("embedding", wte, ids), g.call("embedding", param("wpe", (seq, d)), pos)
    )
    for i in range(layers):
        qkv = g.call(
            "linear",
            norm(x, f"h{i}.ln_1"),
            param(f"h{i}.qkv.w", (3 * d, d)),
            param(f"h{i}.qkv.b", (3 * d,)),
        )
        q, k, v = (g.call("slice", qkv, axis=2, start=j * d, end=(j + 1) * d) for j in range(3))
        att = g.call(
            "attention", q, k, v, num_heads=heads, causal=True, scale=1 / math.sqrt(d // heads)
        )
        proj = g.call("linear", att, param(f"h{i}.proj.w", (d, d)), param(f"h{i}.proj.b", (d,)))
        x = g.call("add", x, proj)
        fc = g.call(
            "linear",
            norm(x, f"h{i}.ln_2"),
            param(f"h{i}.fc.w", (4 * d, d)),
            param(f"h{i}.fc.b", (4 * d,)),
        )
        out = g.call(
            "linear",
            g.call("gelu", fc),
            param(f"h{i}.fc2.w", (d, 4 * d)),
            param(f"h{i}.fc2.b", (d,)),
        )
        x = g.call("add", x, out)
    g.outputs.append(g.call("linear", norm(x, "ln_f"), wte))
    return g


@pytest.fixture
def fused_gpt() -> Callable[..., Graph]:
    """Build a fused GPT graph (see `_fused_gpt`)."""
    return _fused_gpt


@pytest.fixture(scope="session")
def step_graphs() -> tuple[Graph, Graph]:
    """Prefill (4 tokens) and decode graphs of the fused GPT, a cache of 16 slots per layer."""
    from cgc.passes.kv_cache import derive_step_graphs

    return derive_step_graphs(_fused_gpt(seq=16), 4)
