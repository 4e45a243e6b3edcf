"""Structural and type checks of a graph; run after every pass in tests and debug mode."""

from __future__ import annotations

from collections import Counter

from cgc.errors import IRError
from cgc.ir.graph import Graph
from cgc.ir.ops import get_op


def verify(graph: Graph) -> None:
    """Raise IRError naming the first problem: SSA, use-before-def, arity, attrs, types,
    trainable parameters."""
    defined: set[int] = set()
    names: set[str] = set()

    def define(v, where: str) -> None:
        if v.name in names:
            raise IRError(f"%{v.name} is defined twice ({where})")
        names.add(v.name)
        defined.add(id(v))

    for v in graph.inputs:
        define(v, "graph input")
    for name, v in graph.params.items():
        if v.name != name or v.producer is not None:
            raise IRError(f"parameter %{name} is inconsistent with its value %{v.name}")
        define(v, "parameter")
    for name in sorted(graph.trainable):
        if name not in graph.params:
            raise IRError(f"trainable %{name} is not a parameter")
        if not graph.params[name].type.is_float:
            raise IRError(f"trainable parameter %{name} is {graph.params[name].type}, not float")
    for node in graph.nodes:
        where = f"{node.op} defining {', '.join('%' + v.name for v in node.outputs)}"
        opdef = get_op(node.op)
        if not opdef.accepts(len(node.inputs)):
            raise IRError(f"{where}: takes {opdef.arity} inputs, got {len(node.inputs)}")
        for v in node.inputs:
            if id(v) not in defined:
                raise IRError(f"{where}: %{v.name} is used before it is defined")
            if node not in v.users:
                raise IRError(f"{where}: use list of %{v.name} is missing this node")
        attrs = opdef.complete_attrs(node.attrs)
        if attrs != node.attrs:
            raise IRError(f"{where}: attributes {node.attrs} lack defaults {attrs}")
        try:
            expected = opdef.infer([v.type for v in node.inputs], node.attrs)
        except IRError as e:
            raise IRError(f"{where}: {e}") from None
        got = [v.type for v in node.outputs]
        if got != expected:
            raise IRError(
                f"{where}: result types {', '.join(map(str, got))} disagree with inference "
                f"{', '.join(map(str, expected))}"
            )
        for v in node.outputs:
            if v.producer is not node:
                raise IRError(f"{where}: %{v.name} does not point back to its producer")
            define(v, where)
    for v in graph.outputs:
        if id(v) not in defined:
            raise IRError(f"graph output %{v.name} is not defined")
    for v in graph.values():
        counts = Counter(id(n) for n in v.users)
        for user in {id(n): n for n in v.users}.values():
            if counts[id(user)] != sum(x is v for x in user.inputs):
                raise IRError(f"use list of %{v.name} disagrees with the inputs of {user}")
