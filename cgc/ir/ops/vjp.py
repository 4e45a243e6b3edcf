"""Building blocks shared by the ops' vector-Jacobian product rules (see `VjpFn` in registry).

A rule emits IR with these helpers, so a cotangent always leaves a rule with the exact type of
the operand it belongs to: broadcasting is summed back, reductions are expanded back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cgc.ir.ops.infer import norm_axis
from cgc.ir.types import TensorType


def unbroadcast(g: Any, dy: Any, like: TensorType) -> Any:
    """`dy` summed over the axes that broadcasting added or stretched, shaped as `like`."""
    if dy.shape == like.shape:
        return dy
    lead = len(dy.shape) - like.rank
    axes = list(range(lead)) + [
        lead + i for i, d in enumerate(like.shape) if d == 1 and dy.shape[lead + i] != 1
    ]
    out = g.call("reduce_sum", dy, axes=axes, keepdim=False) if axes else dy
    if out.shape != like.shape:
        out = g.call("reshape", out, shape=list(like.shape))
    return out


def expand_reduced(g: Any, dy: Any, x: TensorType, axes: Sequence[int], keepdim: bool) -> Any:
    """The cotangent of a reduction's result, broadcast back over the reduced axes of `x`."""
    reduced = {norm_axis(a, x.rank) for a in axes}
    kept = [1 if i in reduced else d for i, d in enumerate(x.shape)]
    if not keepdim:
        dy = g.call("reshape", dy, shape=kept)
    return g.call("expand", dy, shape=list(x.shape)) if tuple(kept) != x.shape else dy


def scalar(g: Any, value: float, like: Any) -> Any:
    """A scalar constant of `like`'s dtype."""
    return g.constant(value, like.dtype)


def zeros_where(g: Any, cond: Any, dy: Any, *, keep_if: bool) -> Any:
    """`dy` where `cond` is `keep_if`, zero elsewhere (broadcast to the wider of the two)."""
    zero = scalar(g, 0.0, dy)
    return g.call("where", cond, dy, zero) if keep_if else g.call("where", cond, zero, dy)


def swap_last_two(g: Any, x: Any) -> Any:
    """`x` with its last two axes exchanged (a matrix transpose per batch element)."""
    perm = list(range(len(x.shape)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return g.call("transpose", x, perm=perm)


def replace_forward(g: Any, node: Any, op: str, inputs: Sequence[Any] | None = None) -> Any:
    """Swap forward `node` for an `op` node (same attrs) computing the same outputs and more.

    A VJP rule uses it when its backward needs a residual the op does not output (attention's
    log-sum-exp): the new node goes where `node` was, takes over its uses and output names, and
    `node` is left unused for the autodiff pass to erase.
    """
    with g.inserting_before(node, node.meta):
        new = g.add_node(op, list(node.inputs if inputs is None else inputs), node.attrs)
    first = node.outputs[0].name
    for old, out in zip(node.outputs, new.outputs, strict=False):
        name = old.name
        g.replace_all_uses(old, out)  # swaps the names when `old` is a graph output
        if out.name != name:
            g.rename(old, g.fresh_name(f"{name}.replaced"))
            g.rename(out, name)
    for extra in new.outputs[len(node.outputs) :]:
        g.rename(extra, g.fresh_name(f"{first}.{op}"))
    return new
