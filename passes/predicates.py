"""Small predicates that fusion patterns share; each docstring is what `explain` prints."""

from __future__ import annotations

from cgc.ir import Node, Value


def is_float(value: Value) -> bool:
    """a floating-point tensor"""
    return value.type.is_float


def over_last_axis(node: Node) -> bool:
    """a reduction over the last axis only, keeping it (axes=[-1] or [rank-1], keepdim)"""
    rank = node.inputs[0].type.rank
    return node.attrs["keepdim"] and [a % rank for a in node.attrs["axes"]] == [rank - 1]


def positive(number: float) -> bool:
    """a positive number"""
    return number > 0
