"""Elementwise ops: unary math, binary arithmetic and comparison, select, cast, constants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import broadcast, float_unary, same_dtype, unary
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.types import TORCH_DTYPES, TensorType


def _per_element(cost: int):
    def flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
        return cost * outs[0].numel

    return flops


def _binary(op: str):
    def infer(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        dtype = same_dtype(op, *ins)
        if op in _FLOAT_ONLY and not ins[0].is_float:
            raise IRError(f"{op}: needs floating-point operands, got {dtype}; insert a cast")
        return [TensorType(broadcast(*ins), dtype)]

    return infer


def _to_bool(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [ins[0].with_dtype("bool")]


def _compare(op: str):
    def infer(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        same_dtype(op, *ins)
        return [TensorType(broadcast(*ins), "bool")]

    return infer


_UNARY = {
    "neg": (torch.neg, unary, 1),
    "abs": (torch.abs, unary, 1),
    "exp": (torch.exp, float_unary, 1),
    "log": (torch.log, float_unary, 1),
    "sqrt": (torch.sqrt, float_unary, 1),
    "rsqrt": (torch.rsqrt, float_unary, 1),
    "reciprocal": (torch.reciprocal, float_unary, 1),
    "tanh": (torch.tanh, float_unary, 1),
    "erf": (torch.erf, float_unary, 1),
    "sigmoid": (torch.sigmoid, float_unary, 1),
    "relu": (torch.relu, unary, 1),
    "logical_not": (torch.logical_not, _to_bool, 0),
}

# torch's true division of integers gives floats; the IR keeps dtypes exact, so div takes
# floats only and integer operands are cast explicitly.
_FLOAT_ONLY = frozenset({"div"})

_BINARY = {
    # name: (torch fn, commutative)
    "add": (torch.add, True),
    "sub": (torch.sub, False),
    "mul": (torch.mul, True),
    "div": (torch.div, False),
    "pow": (torch.pow, False),
    "maximum": (torch.maximum, True),
    "minimum": (torch.minimum, True),
}

_COMPARE = {
    "eq": (torch.eq, True),
    "ne": (torch.ne, True),
    "lt": (torch.lt, False),
    "le": (torch.le, False),
    "gt": (torch.gt, False),
    "ge": (torch.ge, False),
    "logical_and": (torch.logical_and, True),
    "logical_or": (torch.logical_or, True),
}


def _register_simple() -> None:
    for name, (fn, infer, cost) in _UNARY.items():
        register(name, arity=1, infer=infer, flops=_per_element(cost))(_wrap(fn, name))
    for name, (fn, comm) in _BINARY.items():
        register(name, arity=2, infer=_binary(name), flops=_per_element(1), commutative=comm)(
            _wrap(fn, name)
        )
    for name, (fn, comm) in _COMPARE.items():
        register(name, arity=2, infer=_compare(name), flops=_per_element(1), commutative=comm)(
            _wrap(fn, name)
        )


def _wrap(fn, name: str):
    def impl(*args: torch.Tensor) -> torch.Tensor:
        return fn(*args)

    impl.__doc__ = f"Elementwise torch.{fn.__name__}."
    impl.__name__ = name
    return impl


_register_simple()


def _infer_where(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    if ins[0].dtype != "bool":
        raise IRError(f"where: condition must be bool, got {ins[0]}")
    return [TensorType(broadcast(*ins), same_dtype("where", ins[1], ins[2]))]


@register("where", arity=3, infer=_infer_where, flops=_per_element(1))
def where(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Select `a` where `cond` holds, else `b`."""
    return torch.where(cond, a, b)


def _infer_cast(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [ins[0].with_dtype(attrs["dtype"])]


@register("cast", arity=1, attrs={"dtype": REQUIRED}, infer=_infer_cast)
def cast(x: torch.Tensor, *, dtype: str) -> torch.Tensor:
    """Convert to another element type."""
    return x.to(TORCH_DTYPES[dtype])


def _infer_constant(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [TensorType(tuple(attrs["shape"]), attrs["dtype"])]


@register(
    "constant",
    arity=0,
    attrs={"value": REQUIRED, "dtype": "f32", "shape": []},
    infer=_infer_constant,
)
def constant(*, value: float | int | bool, dtype: str, shape: list[int]) -> torch.Tensor:
    """A tensor filled with one scalar value (scalars have shape [])."""
    return torch.full(tuple(shape), value, dtype=TORCH_DTYPES[dtype])
