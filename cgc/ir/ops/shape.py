"""Data-movement ops: reshape, transpose, expand, slice, pad, concat. Shapes are static."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import norm_axis, same_dtype
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.ops.vjp import unbroadcast
from cgc.ir.types import TensorType


def _infer_reshape(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = tuple(attrs["shape"])
    if prod(shape) != ins[0].numel or any(d < 0 for d in shape):
        raise IRError(f"reshape: cannot view {ins[0]} as {list(shape)}")
    return [ins[0].with_shape(shape)]


def _reshape_vjp(g, node, cotangents):
    return [g.call("reshape", cotangents[0], shape=list(node.inputs[0].shape))]


@register("reshape", arity=1, attrs={"shape": REQUIRED}, infer=_infer_reshape, vjp=_reshape_vjp)
def reshape(x: torch.Tensor, *, shape: list[int]) -> torch.Tensor:
    """Same elements, new static shape."""
    return x.reshape(shape)


def _infer_transpose(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    perm = list(attrs["perm"])
    if sorted(perm) != list(range(ins[0].rank)):
        raise IRError(f"transpose: {perm} is not a permutation of rank {ins[0].rank}")
    return [ins[0].with_shape(tuple(ins[0].shape[p] for p in perm))]


def _transpose_vjp(g, node, cotangents):
    perm = node.attrs["perm"]
    inverse = sorted(range(len(perm)), key=lambda i: perm[i])
    return [g.call("transpose", cotangents[0], perm=inverse)]


@register(
    "transpose", arity=1, attrs={"perm": REQUIRED}, infer=_infer_transpose, vjp=_transpose_vjp
)
def transpose(x: torch.Tensor, *, perm: list[int]) -> torch.Tensor:
    """Permute axes: output axis i is input axis perm[i]."""
    return x.permute(perm)


def _infer_expand(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = tuple(attrs["shape"])
    x = ins[0]
    if len(shape) < x.rank or any(
        d != s and d != 1 for d, s in zip(x.shape[::-1], shape[::-1], strict=False)
    ):
        raise IRError(f"expand: cannot broadcast {x} to {list(shape)}")
    return [x.with_shape(shape)]


def _expand_vjp(g, node, cotangents):
    return [unbroadcast(g, cotangents[0], node.inputs[0].type)]


@register("expand", arity=1, attrs={"shape": REQUIRED}, infer=_infer_expand, vjp=_expand_vjp)
def expand(x: torch.Tensor, *, shape: list[int]) -> torch.Tensor:
    """Broadcast to a larger static shape."""
    return x.expand(shape)


def _infer_slice(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ins[0]
    axis = norm_axis(attrs["axis"], x.rank)
    start, end, step = attrs["start"], attrs["end"], attrs["step"]
    if not (0 <= start <= end <= x.shape[axis]) or step < 1:
        raise IRError(f"slice: [{start}:{end}:{step}] out of range for axis {axis} of {x}")
    shape = list(x.shape)
    shape[axis] = len(range(start, end, step))
    return [x.with_shape(tuple(shape))]


def _slice_vjp(g, node, cotangents):
    """The cotangent padded back with zeros where the slice skipped elements."""
    x, y, a = node.inputs[0], node.output, node.attrs
    axis = norm_axis(a["axis"], x.type.rank)
    n = y.shape[axis]
    last = a["start"] + (n - 1) * a["step"] + 1 if n else a["start"]
    after = x.shape[axis] - last
    interior = a["step"] - 1 if n > 1 else 0
    dx = g.call("pad", cotangents[0], axis=axis, before=a["start"], after=after, interior=interior)
    return [dx]


@register(
    "slice",
    arity=1,
    attrs={"axis": REQUIRED, "start": REQUIRED, "end": REQUIRED, "step": 1},
    infer=_infer_slice,
    vjp=_slice_vjp,
)
def slice_(x: torch.Tensor, *, axis: int, start: int, end: int, step: int) -> torch.Tensor:
    """Elements start, start+step, ... < end along `axis` (bounds already clamped)."""
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _infer_concat(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    dtype = same_dtype("concat", *ins)
    axis = norm_axis(attrs["axis"], ins[0].rank)
    rest = {t.shape[:axis] + t.shape[axis + 1 :] for t in ins}
    if len(rest) != 1 or len({t.rank for t in ins}) != 1:
        raise IRError(f"concat: shapes {', '.join(map(str, ins))} differ off axis {axis}")
    shape = list(ins[0].shape)
    shape[axis] = sum(t.shape[axis] for t in ins)
    return [TensorType(tuple(shape), dtype)]


def _concat_vjp(g, node, cotangents):
    axis = norm_axis(node.attrs["axis"], node.output.type.rank)
    out, start = [], 0
    for x in node.inputs:
        end = start + x.shape[axis]
        out.append(g.call("slice", cotangents[0], axis=axis, start=start, end=end))
        start = end
    return out


@register("concat", arity=(1, -1), attrs={"axis": REQUIRED}, infer=_infer_concat, vjp=_concat_vjp)
def concat(*xs: torch.Tensor, axis: int) -> torch.Tensor:
    """Join tensors along `axis`."""
    return torch.cat(xs, dim=axis)


def _infer_pad(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ins[0]
    axis = norm_axis(attrs["axis"], x.rank)
    before, after, interior = attrs["before"], attrs["after"], attrs["interior"]
    if min(before, after, interior) < 0:
        raise IRError(f"pad: before {before}, after {after}, interior {interior} must be >= 0")
    n = x.shape[axis]
    shape = list(x.shape)
    shape[axis] = before + n + max(n - 1, 0) * interior + after
    return [x.with_shape(tuple(shape))]


def _pad_vjp(g, node, cotangents):
    x, a = node.inputs[0], node.attrs
    axis = norm_axis(a["axis"], x.type.rank)
    step = a["interior"] + 1
    end = a["before"] + (x.shape[axis] - 1) * step + 1 if x.shape[axis] else a["before"]
    return [g.call("slice", cotangents[0], axis=axis, start=a["before"], end=end, step=step)]


@register(
    "pad",
    arity=1,
    attrs={"axis": REQUIRED, "before": REQUIRED, "after": REQUIRED, "interior": 0},
    infer=_infer_pad,
    vjp=_pad_vjp,
)
def pad(x: torch.Tensor, *, axis: int, before: int, after: int, interior: int) -> torch.Tensor:
    """Zeros around `x` along `axis`: `before`, then its elements `interior` zeros apart, then
    `after` (XLA's Pad on one axis; the inverse of `slice`)."""
    axis = axis % x.dim()
    n = x.shape[axis]
    shape = list(x.shape)
    shape[axis] = before + n + max(n - 1, 0) * interior + after
    out = x.new_zeros(shape)
    index = [slice(None)] * x.dim()
    index[axis] = slice(
        before, before + max(n - 1, 0) * (interior + 1) + 1 if n else before, interior + 1
    )
    out[tuple(index)] = x
    return out
