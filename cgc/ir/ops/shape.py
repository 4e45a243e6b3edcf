"""Data-movement ops: reshape, transpose, expand, slice, concat. Shapes are static."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import norm_axis, same_dtype
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.types import TensorType


def _infer_reshape(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = tuple(attrs["shape"])
    if prod(shape) != ins[0].numel or any(d < 0 for d in shape):
        raise IRError(f"reshape: cannot view {ins[0]} as {list(shape)}")
    return [ins[0].with_shape(shape)]


@register("reshape", arity=1, attrs={"shape": REQUIRED}, infer=_infer_reshape)
def reshape(x: torch.Tensor, *, shape: list[int]) -> torch.Tensor:
    """Same elements, new static shape."""
    return x.reshape(shape)


def _infer_transpose(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    perm = list(attrs["perm"])
    if sorted(perm) != list(range(ins[0].rank)):
        raise IRError(f"transpose: {perm} is not a permutation of rank {ins[0].rank}")
    return [ins[0].with_shape(tuple(ins[0].shape[p] for p in perm))]


@register("transpose", arity=1, attrs={"perm": REQUIRED}, infer=_infer_transpose)
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


@register("expand", arity=1, attrs={"shape": REQUIRED}, infer=_infer_expand)
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


@register(
    "slice",
    arity=1,
    attrs={"axis": REQUIRED, "start": REQUIRED, "end": REQUIRED, "step": 1},
    infer=_infer_slice,
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


@register("concat", arity=(1, -1), attrs={"axis": REQUIRED}, infer=_infer_concat)
def concat(*xs: torch.Tensor, axis: int) -> torch.Tensor:
    """Join tensors along `axis`."""
    return torch.cat(xs, dim=axis)
