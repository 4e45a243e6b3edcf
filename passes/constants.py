"""Values known at compile time: constant nodes, parameters with data, and what they compute."""

from __future__ import annotations

import torch

from cgc.ir import Graph, Value, get_op


def param_data(graph: Graph, value: Value) -> torch.Tensor | None:
    """The data of a parameter value, or None for non-parameters and meta / absent weights."""
    if value.producer is not None or graph.params.get(value.name) is not value:
        return None
    data = graph.weights.get(value.name)
    return None if data is None or data.is_meta else data


def is_known(graph: Graph, value: Value) -> bool:
    """A `constant` node's output or a parameter with real data."""
    node = value.producer
    return node.op == "constant" if node is not None else param_data(graph, value) is not None


def constant_data(graph: Graph, value: Value) -> torch.Tensor | None:
    """The tensor `value` holds when it depends only on constants and parameters with data
    (evaluated with the reference ops), else None. Used where data decides a rewrite (masks)."""
    needed: dict[int, Value] = {}
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in needed:
            continue
        needed[id(v)] = v
        if v.producer is None:
            if param_data(graph, v) is None:
                return None
        elif len(v.producer.outputs) != 1:
            return None
        else:
            stack.extend(v.producer.inputs)
    env = {id(v): param_data(graph, v) for v in needed.values() if v.producer is None}
    with torch.no_grad():
        for node in graph.nodes:
            if node.outputs and id(node.outputs[0]) in needed:
                args = [env[id(i)] for i in node.inputs]
                env[id(node.output)] = get_op(node.op).impl(*args, **node.attrs)
    return env[id(value)]
