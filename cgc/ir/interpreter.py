"""Runs any graph with the ops' torch reference implementations: the ground truth of cgc."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cgc.errors import CgcError, InputError
from cgc.ir.graph import Graph, Node
from cgc.ir.ops import get_op

Hook = Callable[[Node, Sequence[torch.Tensor]], None]


class Interpreter:
    """Evaluates a graph node by node; `hook(node, outputs)` sees every intermediate value.

    A value is dropped after its last use, so peak memory is the live set, not every
    intermediate: a training step's optimizer alone would otherwise keep a dozen copies of
    the parameters.
    """

    def __init__(self, graph: Graph, hook: Hook | None = None) -> None:
        self.graph = graph
        self.hook = hook

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """The graph outputs for these inputs (one tensor per graph input, in order)."""
        g = self.graph
        if len(inputs) != len(g.inputs):
            raise InputError(f"graph @{g.name} takes {len(g.inputs)} inputs, got {len(inputs)}")
        env: dict[int, torch.Tensor] = {}
        for v, t in zip(g.inputs, inputs, strict=True):
            if tuple(t.shape) != v.shape or t.dtype != v.type.torch_dtype:
                raise InputError(f"input %{v.name} expects {v.type}, got {t.dtype} {list(t.shape)}")
            env[id(v)] = t
        for name, v in g.params.items():
            env[id(v)] = weight_data(g, name)
        last_use = _last_uses(g)
        with torch.no_grad():
            for i, node in enumerate(g.nodes):
                opdef = get_op(node.op)
                result = opdef.impl(*(env[id(v)] for v in node.inputs), **node.attrs)
                outs = result if isinstance(result, tuple) else (result,)
                for v, t in zip(node.outputs, outs, strict=True):
                    env[id(v)] = t
                if self.hook is not None:
                    self.hook(node, outs)
                for v in (*node.inputs, *node.outputs):
                    if last_use.get(id(v)) == i:
                        env.pop(id(v), None)
        return [env[id(v)] for v in g.outputs]


def _last_uses(graph: Graph) -> dict[int, int]:
    """Index of the node after which each value is dead; graph outputs never die."""
    last: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in (*node.inputs, *node.outputs):
            last[id(v)] = i
    for v in graph.outputs:
        last.pop(id(v), None)
    return last


def weight_data(graph: Graph, name: str) -> torch.Tensor:
    """The data of parameter `name`; a clear error when it is a meta weight."""
    data = graph.weights.get(name)
    if data is None or data.is_meta:
        raise CgcError(
            f"parameter %{name} has no data (meta weights); load real weights to run the graph"
        )
    return data


def interpret(graph: Graph, *inputs: torch.Tensor, hook: Hook | None = None) -> list[torch.Tensor]:
    """Run `graph` on `inputs` with the reference implementations."""
    return Interpreter(graph, hook).run(*inputs)
