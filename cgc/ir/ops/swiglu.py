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


@register(
    "swiglu",
    arity=3,
    infer=_infer_swiglu,
    flops=_swiglu_flops,
    decompose=_decompose_swiglu,
    category="fused",
)
def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """silu(x·w_gateᵀ) · (x·w_upᵀ), the weights stored [f, in] as in torch."""
    return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)
