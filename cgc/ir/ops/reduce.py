"""Reductions over axes, and softmax."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.ir.ops.infer import float_unary, norm_axis
from cgc.ir.ops.registry import REQUIRED, register
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


@register("reduce_sum", arity=1, attrs=_REDUCE_ATTRS, infer=_infer_reduce, flops=_input_flops)
def reduce_sum(x: torch.Tensor, *, axes: list[int], keepdim: bool) -> torch.Tensor:
    """Sum over `axes`."""
    return torch.sum(x, dim=tuple(axes), keepdim=keepdim)


@register("reduce_mean", arity=1, attrs=_REDUCE_ATTRS, infer=_infer_reduce, flops=_input_flops)
def reduce_mean(x: torch.Tensor, *, axes: list[int], keepdim: bool) -> torch.Tensor:
    """Mean over `axes`."""
    return torch.mean(x, dim=tuple(axes), keepdim=keepdim)


@register("reduce_max", arity=1, attrs=_REDUCE_ATTRS, infer=_infer_reduce, flops=_input_flops)
def reduce_max(x: torch.Tensor, *, axes: list[int], keepdim: bool) -> torch.Tensor:
    """Maximum over `axes`."""
    return torch.amax(x, dim=tuple(axes), keepdim=keepdim)


def _var_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    return 3 * ins[0].numel


@register(
    "var",
    arity=1,
    attrs={**_REDUCE_ATTRS, "correction": 0},
    infer=_infer_reduce,
    flops=_var_flops,
)
def var(x: torch.Tensor, *, axes: list[int], keepdim: bool, correction: int) -> torch.Tensor:
    """Variance over `axes` with Bessel `correction` (0 = population variance)."""
    return torch.var(x, dim=tuple(axes), keepdim=keepdim, correction=correction)


def _softmax_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    return 5 * ins[0].numel  # max, subtract, exp, sum, divide


@register("softmax", arity=1, attrs={"axis": -1}, infer=float_unary, flops=_softmax_flops)
def softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    """Softmax along `axis`."""
    return torch.softmax(x, dim=axis)


@register("log_softmax", arity=1, attrs={"axis": -1}, infer=float_unary, flops=_softmax_flops)
def log_softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    """Log-softmax along `axis`."""
    return torch.log_softmax(x, dim=axis)
