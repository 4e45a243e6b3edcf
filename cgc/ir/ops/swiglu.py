"""`swiglu`: the gated MLP input of Llama-style blocks, silu(x·w_gateᵀ) · (x·w_upᵀ), fused.

One op rather than `silu` and `mul` on a merged `linear`: the two projections read the same x,
so a backend computes them in one pass over it (ONNX Runtime: one Gemm on the two weights
stacked at export; the wafer: one region holding both, gating where the products land), while
the graph keeps the model's own weight parameters, so checkpoints and gradients still map one to
one onto the module's weights. The down projection stays a `linear`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cgc.errors import IRError
from cgc.ir.ops.infer import same_dtype
from cgc.ir.ops.registry import register
from cgc.ir.types import TensorType


def _infer_swiglu(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w_gate, w_up = ins
    if w_gate.rank != 2 or w_gate.shape != w_up.shape or x.shape[-1] != w_gate.shape[1]:
        raise IRError(
            f"swiglu: input {x} does not fit weights {w_gate} and {w_up} (expected two [f, in])"
        )
    return [TensorType(x.shape[:-1] + (w_gate.shape[0],), same_dtype("swiglu", *ins))]


def _swiglu_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return 4 * outs[0].numel * ins[0].shape[-1] + 4 * outs[0].numel  # two products, silu, gate


def _decompose_swiglu(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    x, w_gate, w_up = ins

    def project(w):
        return g.call("matmul", x, g.call("transpose", w, perm=[1, 0]))

    return [g.call("mul", g.call("silu", project(w_gate)), project(w_up))]


def _swiglu_vjp(g, node, cotangents: Sequence) -> list:
    """With gate = x·w_gateᵀ, s = sigmoid(gate), up = x·w_upᵀ: d_up = dy·silu(gate),
    d_gate = dy·up·s·(1 + gate·(1 - s)); dx = d_gate·w_gate + d_up·w_up and each weight's
    gradient is its product's cotangent, transposed, times x (over all rows)."""
    (dy,) = cotangents
    if dy is None:
        return [None, None, None]
    x, w_gate, w_up = node.inputs

    def project(w):
        return g.call("matmul", x, g.call("transpose", w, perm=[1, 0]))

    gate, up = project(w_gate), project(w_up)
    s = g.call("sigmoid", gate)
    one = g.constant(1.0, x.dtype)
    d_up = g.call("mul", dy, g.call("mul", gate, s))
    slope = g.call("mul", s, g.call("add", one, g.call("mul", gate, g.call("sub", one, s))))
    d_gate = g.call("mul", g.call("mul", dy, up), slope)
    dx = g.call("add", g.call("matmul", d_gate, w_gate), g.call("matmul", d_up, w_up))
    rows = [x.type.numel // x.shape[-1], x.shape[-1]]

    def weight_grad(d):
        flat = g.call("reshape", d, shape=[rows[0], d.shape[-1]])
        return g.call(
            "matmul", g.call("transpose", flat, perm=[1, 0]), g.call("reshape", x, shape=rows)
        )

    return [dx, weight_grad(d_gate), weight_grad(d_up)]


@register(
    "swiglu",
    arity=3,
    infer=_infer_swiglu,
    flops=_swiglu_flops,
    decompose=_decompose_swiglu,
    category="fused",
    vjp=_swiglu_vjp,
)
def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """silu(x·w_gateᵀ) · (x·w_upᵀ), the weights stored [f, in] as in torch."""
    return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)
