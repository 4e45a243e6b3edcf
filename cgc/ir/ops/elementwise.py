"""Elementwise ops: unary math, binary arithmetic and comparison, select, cast, constants."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import broadcast, float_unary, same_dtype, unary
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.ops.vjp import scalar, unbroadcast, zeros_where
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


# -- vector-Jacobian products (dy is the output's cotangent, y the output) -----------------------


def _unary_vjp(derivative):
    """The VJP of y = f(x) given f'(x) as IR: `derivative(g, x, y, dy)` returns dy·f'(x)."""

    def vjp(g, node, cotangents):
        return [derivative(g, node.inputs[0], node.output, cotangents[0])]

    return vjp


def _mul(g, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = g.call("mul", out, x)
    return out


def _sign_times(g, x, y, dy):
    """d|x| = sign(x)·dy, 0 at x = 0 (as torch)."""
    zero = scalar(g, 0.0, x)
    negative = g.call("where", g.call("lt", x, zero), g.call("neg", dy), zero)
    return g.call("where", g.call("gt", x, zero), dy, negative)


def _one_minus_square(g, y):
    return g.call("sub", scalar(g, 1.0, y), g.call("mul", y, y))


def _silu_slope(g, x):
    """d (x·σ(x)) / dx = σ(x)·(1 + x·(1 - σ(x)))"""
    s, one = g.call("sigmoid", x), scalar(g, 1.0, x)
    return g.call("mul", s, g.call("add", one, g.call("mul", x, g.call("sub", one, s))))


_UNARY_DERIVATIVES = {
    "neg": lambda g, x, y, dy: g.call("neg", dy),
    "abs": _sign_times,
    "exp": lambda g, x, y, dy: g.call("mul", dy, y),
    "log": lambda g, x, y, dy: g.call("div", dy, x),
    "sqrt": lambda g, x, y, dy: g.call("div", g.call("mul", dy, scalar(g, 0.5, x)), y),
    "rsqrt": lambda g, x, y, dy: _mul(g, dy, scalar(g, -0.5, x), y, y, y),
    "reciprocal": lambda g, x, y, dy: _mul(g, g.call("neg", dy), y, y),
    "tanh": lambda g, x, y, dy: g.call("mul", dy, _one_minus_square(g, y)),
    # d erf(x) = 2/√π · exp(-x²)
    "erf": lambda g, x, y, dy: _mul(
        g,
        dy,
        scalar(g, 2.0 / math.sqrt(math.pi), x),
        g.call("exp", g.call("neg", g.call("mul", x, x))),
    ),
    "sigmoid": lambda g, x, y, dy: _mul(g, dy, y, g.call("sub", scalar(g, 1.0, y), y)),
    "cos": lambda g, x, y, dy: g.call("neg", g.call("mul", dy, g.call("sin", x))),
    "sin": lambda g, x, y, dy: g.call("mul", dy, g.call("cos", x)),
    # torch's threshold_backward: the gradient passes where the output is positive
    "relu": lambda g, x, y, dy: zeros_where(
        g, g.call("gt", y, scalar(g, 0.0, y)), dy, keep_if=True
    ),
    "silu": lambda g, x, y, dy: g.call("mul", dy, _silu_slope(g, x)),
}

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
    "silu": (torch.nn.functional.silu, float_unary, 2),
    "cos": (torch.cos, float_unary, 1),  # cosine learning-rate decay, rotary embeddings
    "sin": (torch.sin, float_unary, 1),
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


def _binary_vjp(partials):
    """The VJP of y = f(a, b) given `partials(g, a, b, y, dy) -> (dy·∂f/∂a, dy·∂f/∂b)` at the
    broadcast shape; each is summed back to its operand's shape."""

    def vjp(g, node, cotangents):
        a, b = node.inputs
        da, db = partials(g, a, b, node.output, cotangents[0])
        return [unbroadcast(g, da, a.type), unbroadcast(g, db, b.type)]

    return vjp


def _pow_partials(g, a, b, y, dy):
    """As torch: ∂/∂a = b·a^(b-1), 0 where b = 0; ∂/∂b = y·log(a), 0 where a = 0 and b >= 0."""
    zero = scalar(g, 0.0, a)
    da = _mul(g, dy, b, g.call("pow", a, g.call("sub", b, scalar(g, 1.0, b))))
    da = zeros_where(g, g.call("eq", b, zero), da, keep_if=False)
    db = _mul(g, dy, y, g.call("log", a))
    at_zero = g.call("logical_and", g.call("eq", a, zero), g.call("ge", b, zero))
    return da, zeros_where(g, at_zero, db, keep_if=False)


def _extremum_partials(wins: str):
    """maximum (wins="gt") / minimum (wins="lt"): the gradient goes to the selected operand; a
    tie splits it evenly, as torch does."""
    loses = {"gt": "lt", "lt": "gt"}[wins]

    def partials(g, a, b, y, dy):
        half = g.call("mul", dy, scalar(g, 0.5, dy))
        tie = zeros_where(g, g.call("eq", a, b), half, keep_if=True)
        da = g.call("where", g.call(wins, a, b), dy, tie)
        db = g.call("where", g.call(loses, a, b), dy, tie)
        return da, db

    return partials


_BINARY_PARTIALS = {
    "add": lambda g, a, b, y, dy: (dy, dy),
    "sub": lambda g, a, b, y, dy: (dy, g.call("neg", dy)),
    "mul": lambda g, a, b, y, dy: (g.call("mul", dy, b), g.call("mul", dy, a)),
    "div": lambda g, a, b, y, dy: (
        g.call("div", dy, b),
        g.call("neg", g.call("mul", dy, g.call("div", y, b))),
    ),
    "pow": _pow_partials,
    "maximum": _extremum_partials("gt"),
    "minimum": _extremum_partials("lt"),
}


def _register_simple() -> None:
    for name, (fn, infer, cost) in _UNARY.items():
        derivative = _UNARY_DERIVATIVES.get(name)
        register(
            name,
            arity=1,
            infer=infer,
            flops=_per_element(cost),
            vjp=_unary_vjp(derivative) if derivative else None,
            differentiable=derivative is not None,
        )(_wrap(fn, name))
    for name, (fn, comm) in _BINARY.items():
        register(
            name,
            arity=2,
            infer=_binary(name),
            flops=_per_element(1),
            commutative=comm,
            vjp=_binary_vjp(_BINARY_PARTIALS[name]),
        )(_wrap(fn, name))
    for name, (fn, comm) in _COMPARE.items():
        register(
            name,
            arity=2,
            infer=_compare(name),
            flops=_per_element(1),
            commutative=comm,
            differentiable=False,
        )(_wrap(fn, name))


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


def _where_vjp(g, node, cotangents):
    cond, a, b = node.inputs
    dy = cotangents[0]
    da = zeros_where(g, cond, dy, keep_if=True)
    db = zeros_where(g, cond, dy, keep_if=False)
    return [None, unbroadcast(g, da, a.type), unbroadcast(g, db, b.type)]


@register("where", arity=3, infer=_infer_where, flops=_per_element(1), vjp=_where_vjp)
def where(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Select `a` where `cond` holds, else `b`."""
    return torch.where(cond, a, b)


def _infer_cast(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [ins[0].with_dtype(attrs["dtype"])]


def _cast_vjp(g, node, cotangents):
    """A float-to-float cast passes the cotangent back in the input's precision; a cast from or
    to integers or bool carries no gradient."""
    x, y = node.inputs[0], node.output
    if not (x.type.is_float and y.type.is_float):
        return [None]
    return [g.call("cast", cotangents[0], dtype=x.dtype)]


@register("cast", arity=1, attrs={"dtype": REQUIRED}, infer=_infer_cast, vjp=_cast_vjp)
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
    differentiable=False,
)
def constant(*, value: float | int | bool, dtype: str, shape: list[int]) -> torch.Tensor:
    """A tensor filled with one scalar value (scalars have shape [])."""
    return torch.full(tuple(shape), value, dtype=TORCH_DTYPES[dtype])
