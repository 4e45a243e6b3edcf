"""Reductions over axes, running sums, and softmax."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.ir.ops.infer import float_unary, norm_axis
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.ops.vjp import expand_reduced, scalar
from cgc.ir.types import TensorType


def _infer_reduce(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ins[0]
    axes = {norm_axis(a, x.rank) for a in attrs["axes"]}
    if attrs["keepdim"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [x.with_shape(shape)]


def _input_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    return ins[0].numel


_REDUCE_ATTRS = {"axes": REQUIRED, "keepdim": False}


def _count(x: TensorType, axes: Sequence[int]) -> int:
    return math.prod(x.shape[norm_axis(a, x.rank)] for a in set(axes))


def _reduce_sum_vjp(g, node, cotangents):
    x, a = node.inputs[0], node.attrs
    return [expand_reduced(g, cotangents[0], x.type, a["axes"], a["keepdim"])]


def _reduce_mean_vjp(g, node, cotangents):
    x, a = node.inputs[0], node.attrs
    dy = g.call("mul", cotangents[0], scalar(g, 1.0 / _count(x.type, a["axes"]), x))
    return [expand_reduced(g, dy, x.type, a["axes"], a["keepdim"])]


def _reduce_max_vjp(g, node, cotangents):
    """As torch's amax: the gradient is shared evenly by the elements equal to the maximum."""
    x, a = node.inputs[0], node.attrs
    top = expand_reduced(g, node.output, x.type, a["axes"], a["keepdim"])
    hits = g.call("cast", g.call("eq", x, top), dtype=x.dtype)
    count = g.call("reduce_sum", hits, axes=a["axes"], keepdim=a["keepdim"])
    dy = g.call("div", cotangents[0], count)
    return [g.call("mul", hits, expand_reduced(g, dy, x.type, a["axes"], a["keepdim"]))]


@register(
    "reduce_sum",
    arity=1,
    attrs=_REDUCE_ATTRS,
    infer=_infer_reduce,
    flops=_input_flops,
    vjp=_reduce_sum_vjp,
)
def reduce_sum(x: torch.Tensor, *, axes: list[int], keepdim: bool) -> torch.Tensor:
    """Sum over `axes`."""
    return torch.sum(x, dim=tuple(axes), keepdim=keepdim)


@register(
    "reduce_mean",
    arity=1,
    attrs=_REDUCE_ATTRS,
    infer=_infer_reduce,
    flops=_input_flops,
    vjp=_reduce_mean_vjp,
)
def reduce_mean(x: torch.Tensor, *, axes: list[int], keepdim: bool) -> torch.Tensor:
    """Mean over `axes`."""
    return torch.mean(x, dim=tuple(axes), keepdim=keepdim)


@register(
    "reduce_max",
    arity=1,
    attrs=_REDUCE_ATTRS,
    infer=_infer_reduce,
    flops=_input_flops,
    vjp=_reduce_max_vjp,
)
def reduce_max(x: torch.Tensor, *, axes: list[int], keepdim: bool) -> torch.Tensor:
    """Maximum over `axes`."""
    return torch.amax(x, dim=tuple(axes), keepdim=keepdim)


def _var_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    return 3 * ins[0].numel


def _var_vjp(g, node, cotangents):
    """d var = 2·(x - mean(x)) / (n - correction)."""
    x, a = node.inputs[0], node.attrs
    mean = g.call("reduce_mean", x, axes=a["axes"], keepdim=True)
    scale = scalar(g, 2.0 / (_count(x.type, a["axes"]) - a["correction"]), x)
    dy = expand_reduced(g, cotangents[0], x.type, a["axes"], a["keepdim"])
    return [g.call("mul", g.call("mul", dy, scale), g.call("sub", x, mean))]


@register(
    "var",
    arity=1,
    attrs={**_REDUCE_ATTRS, "correction": 0},
    infer=_infer_reduce,
    flops=_var_flops,
    vjp=_var_vjp,
)
def var(x: torch.Tensor, *, axes: list[int], keepdim: bool, correction: int) -> torch.Tensor:
    """Variance over `axes` with Bessel `correction` (0 = population variance)."""
    return torch.var(x, dim=tuple(axes), keepdim=keepdim, correction=correction)


def _infer_cumsum(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    norm_axis(attrs["axis"], ins[0].rank)
    return [ins[0]]


def _cumsum_vjp(g, node, cotangents: Sequence) -> list:
    """Each input adds to its own and every later sum: dx = Σ dy from x's position on, which
    is Σ dy - cumsum(dy) + dy."""
    (dy,) = cotangents
    if dy is None:
        return [None]
    axis = node.attrs["axis"]
    total = g.call("reduce_sum", dy, axes=[axis], keepdim=True)
    return [g.call("add", g.call("sub", total, g.call("cumsum", dy, axis=axis)), dy)]


@register(
    "cumsum",
    arity=1,
    attrs={"axis": REQUIRED},
    infer=_infer_cumsum,
    flops=_input_flops,
    vjp=_cumsum_vjp,
)
def cumsum(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    """Running sum along `axis` (position ids and ALiBi offsets from a padding mask)."""
    return torch.cumsum(x, dim=axis)


def _softmax_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    return 5 * ins[0].numel  # max, subtract, exp, sum, divide


def _softmax_vjp(g, node, cotangents):
    """dx = y·(dy - Σ dy·y)."""
    y, dy, axis = node.output, cotangents[0], node.attrs["axis"]
    total = g.call("reduce_sum", g.call("mul", dy, y), axes=[axis], keepdim=True)
    return [g.call("mul", y, g.call("sub", dy, total))]


def _log_softmax_vjp(g, node, cotangents):
    """dx = dy - exp(y)·Σ dy."""
    y, dy, axis = node.output, cotangents[0], node.attrs["axis"]
    total = g.call("reduce_sum", dy, axes=[axis], keepdim=True)
    return [g.call("sub", dy, g.call("mul", g.call("exp", y), total))]


@register(
    "softmax",
    arity=1,
    attrs={"axis": -1},
    infer=float_unary,
    flops=_softmax_flops,
    vjp=_softmax_vjp,
)
def softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    """Softmax along `axis`."""
    return torch.softmax(x, dim=axis)


@register(
    "log_softmax",
    arity=1,
    attrs={"axis": -1},
    infer=float_unary,
    flops=_softmax_flops,
    vjp=_log_softmax_vjp,
)
def log_softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    """Log-softmax along `axis`."""
    return torch.log_softmax(x, dim=axis)
