"""Shape and dtype inference helpers shared by op definitions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.types import TensorType


def broadcast(*types: TensorType) -> tuple[int, ...]:
    """Numpy-style broadcast of the shapes of `types`."""
    try:
        return tuple(torch.broadcast_shapes(*(t.shape for t in types)))
    except RuntimeError:
        shapes = " and ".join(str(t) for t in types)
        raise IRError(f"shapes {shapes} do not broadcast") from None


def same_dtype(op: str, *types: TensorType) -> str:
    """The common dtype of operands that must agree (casts are explicit in the IR)."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise IRError(f"{op}: operand dtypes differ ({', '.join(sorted(dtypes))}); insert a cast")
    return dtypes.pop()


def norm_axis(axis: int, rank: int) -> int:
    """A non-negative axis index, checked against `rank`."""
    if not -rank <= axis < max(rank, 1):
        raise IRError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def unary(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [ins[0]]


def float_unary(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    if not ins[0].is_float:
        raise IRError(f"expected a floating-point operand, got {ins[0]}")
    return [ins[0]]
