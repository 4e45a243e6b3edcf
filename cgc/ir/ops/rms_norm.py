"""`rms_norm`: root-mean-square normalisation (Llama, Mistral, Qwen2, T5), a fused op."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import same_dtype
from cgc.ir.ops.registry import register
from cgc.ir.types import TensorType


def _infer_rms_norm(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ins[0]
    if not x.is_float:
        raise IRError(f"rms_norm: expected a floating-point operand, got {x}")
    if len(ins) == 2 and ins[1].shape != (x.shape[-1],):
        raise IRError(f"rms_norm: scale {ins[1]} does not match the last axis of {x}")
    same_dtype("rms_norm", *ins)
    return [x]


def _rms_norm_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return 4 * ins[0].numel  # square, mean, scale by the reciprocal root, affine


def _decompose_rms_norm(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    x = ins[0]
    mean_square = g.call("reduce_mean", g.call("mul", x, x), axes=[-1], keepdim=True)
    eps = g.constant(attrs["eps"], x.dtype)
    y = g.call("mul", x, g.call("rsqrt", g.call("add", mean_square, eps)))
    return [g.call("mul", y, ins[1]) if len(ins) == 2 else y]


def _rms_norm_vjp(g, node, cotangents: Sequence) -> list:
    """With r = rsqrt(mean(x²) + ε) and n = x·r: dx = r·(dn - n·mean(dn·n)), dn = dy·w, and
    dw = Σ dy·n over every axis but the last."""
    (dy,) = cotangents
    if dy is None:
        return [None] * len(node.inputs)
    x = node.inputs[0]
    mean_square = g.call("reduce_mean", g.call("mul", x, x), axes=[-1], keepdim=True)
    r = g.call("rsqrt", g.call("add", mean_square, g.constant(node.attrs["eps"], x.dtype)))
    n = g.call("mul", x, r)
    dn = g.call("mul", dy, node.inputs[1]) if len(node.inputs) == 2 else dy
    along = g.call("reduce_mean", g.call("mul", dn, n), axes=[-1], keepdim=True)
    dx = g.call("mul", r, g.call("sub", dn, g.call("mul", n, along)))
    if len(node.inputs) == 1:
        return [dx]
    leading = list(range(x.type.rank - 1))
    return [dx, g.call("reduce_sum", g.call("mul", dy, n), axes=leading, keepdim=False)]


@register(
    "rms_norm",
    arity=(1, 2),
    attrs={"eps": 1e-6},
    infer=_infer_rms_norm,
    flops=_rms_norm_flops,
    decompose=_decompose_rms_norm,
    category="fused",
    vjp=_rms_norm_vjp,
)
def rms_norm(x: torch.Tensor, w: torch.Tensor | None = None, *, eps: float) -> torch.Tensor:
    """x / √(mean(x²) + ε) over the last axis, times the scale w: no centring, no shift."""
    return torch.nn.functional.rms_norm(x, x.shape[-1:], w, eps)
