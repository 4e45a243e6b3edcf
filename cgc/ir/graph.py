"""The graph IR: SSA values with static tensor types, nodes in topological order, parameters.

Parameters (weights, buffers, folded constants) are values without a producer; their data lives
in `Graph.weights` and may be absent or on the meta device, so a 13B model can be compiled
without allocating its weights. The names in `Graph.trainable` are the model's weights that
training updates (printed `param trainable %w`); the other parameters (buffers, causal masks,
folded constants) are fixed, and autodiff never differentiates them unless asked.

The text form (`print_graph`, `str(graph)`) is an MLIR-like listing that `cgc.ir.parse` reads
back exactly:

    graph @gpt(%input_ids: i64[1,128]) {
      param trainable %transformer.wte.weight: f32[50257,768]
      %embedding = embedding(%transformer.wte.weight, %input_ids) : f32[1,128,768] #{scope="wte"}
      return %embedding
    }

`trainable` marks the parameters training updates. Attributes follow the operands in `{...}`
(but for those an op elides at their default, see `OpDef.elide`); node meta (scope, source
line, stage) follows the result types in `#{...}`. Meta keys starting with `_` are private to a
pass and not printed.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.types import TensorType

_NAME_OK = re.compile(r"^[A-Za-z0-9_.]+$")


class Value:
    """An SSA value: a graph input, a parameter, or a node output."""

    __slots__ = ("name", "type", "producer", "users")

    def __init__(self, name: str, type: TensorType, producer: Node | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.users: list[Node] = []

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation: `outputs = op(inputs) {attrs}`, with meta such as scope and source line."""

    __slots__ = ("op", "inputs", "outputs", "attrs", "meta")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.op = op
        self.inputs: list[Value] = list(inputs)
        self.outputs: list[Value] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def output(self) -> Value:
        """The single output of a one-output node."""
        if len(self.outputs) != 1:
            raise IRError(f"{self.op} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    def __repr__(self) -> str:
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        ins = ", ".join(f"%{v.name}" for v in self.inputs)
        return f"<{outs} = {self.op}({ins})>"


class Graph:
    """A function from input tensors to output tensors, with parameters and ordered nodes."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.params: dict[str, Value] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.trainable: set[str] = set()
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._insert_at: Node | None = None
        self._default_meta: dict[str, Any] = {}

    # -- names ---------------------------------------------------------------------------------

    def fresh_name(self, hint: str = "v") -> str:
        """A value name not used yet in this graph, derived from `hint`."""
        base = re.sub(r"[^A-Za-z0-9_.]", "_", hint) or "v"
        if base not in self._names:
            return base
        i = 1
        while f"{base}_{i}" in self._names:
            i += 1
        return f"{base}_{i}"

    def _claim(self, name: str) -> str:
        if not _NAME_OK.match(name):
            raise IRError(f"invalid value name {name!r}")
        if name in self._names:
            raise IRError(f"value %{name} is defined twice")
        self._names.add(name)
        return name

    # -- building ------------------------------------------------------------------------------

    def add_input(self, name: str, type: TensorType) -> Value:
        """Append a graph input."""
        value = Value(self._claim(name), type)
        self.inputs.append(value)
        return value

    def add_param(
        self,
        name: str,
        type: TensorType,
        data: torch.Tensor | None = None,
        *,
        trainable: bool = False,
    ) -> Value:
        """Add a parameter; `data` may be None or a meta tensor (a weight without storage).

        `trainable` marks a model weight that training updates (floating point only).
        """
        if trainable and not type.is_float:
            raise IRError(f"parameter %{name}: a {type} cannot be trainable (not floating point)")
        value = Value(self._claim(name), type)
        self.params[name] = value
        if data is not None:
            self.weights[name] = data
        if trainable:
            self.trainable.add(name)
        return value

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        *,
        names: Sequence[str] | None = None,
        types: Sequence[TensorType] | None = None,
    ) -> Node:
        """Create a node at the insertion point, inferring output types unless `types` is given."""
        from cgc.ir.ops import get_op

        opdef = get_op(op)
        node = Node(op, inputs, opdef.complete_attrs(attrs or {}), meta or self._default_meta)
        if types is None:
            types = opdef.infer([v.type for v in inputs], node.attrs)
        for i, type in enumerate(types):
            name = self.fresh_name(op) if names is None else names[i]
            node.outputs.append(Value(self._claim(name), type, node))
        if names is not None and len(names) != len(types):
            raise IRError(f"{op}: {len(names)} names for {len(types)} results")
        for v in inputs:
            v.users.append(node)
        if self._insert_at is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(self._insert_at), node)
        return node

    def call(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Add a one-output node and return its output: `g.call("add", x, y)`."""
        return self.add_node(op, inputs, attrs).output

    def constant(self, value: float | int | bool, dtype: str = "f32") -> Value:
        """A scalar constant node of the given dtype."""
        return self.add_node("constant", [], {"value": value, "dtype": dtype, "shape": []}).output

    @contextmanager
    def inserting_before(
        self, node: Node | None, meta: Mapping[str, Any] | None = None
    ) -> Iterator[None]:
        """New nodes go before `node` (the end when None) and inherit `meta` (e.g. its scope)."""
        saved = self._insert_at, self._default_meta
        self._insert_at = node
        self._default_meta = dict(meta or {})
        try:
            yield
        finally:
            self._insert_at, self._default_meta = saved

    # -- editing -------------------------------------------------------------------------------

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every user of `old` (and the graph outputs) use `new` instead.

        A graph output keeps its name: `new` takes it over (swapping names with `old`), so
        outputs read the same before and after any rewrite.
        """
        for user in old.users:
            user.inputs = [new if v is old else v for v in user.inputs]
            new.users.append(user)
        old.users = []
        if old in self.outputs:
            if old.producer is not None and new.producer is not None and new not in self.outputs:
                old.name, new.name = new.name, old.name
            self.outputs = [new if v is old else v for v in self.outputs]

    def set_input(self, node: Node, index: int, new: Value) -> None:
        """Replace one input of `node`, keeping use lists right."""
        old = node.inputs[index]
        old.users.remove(node)
        node.inputs[index] = new
        new.users.append(node)

    def erase_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for out in node.outputs:
            if out.users or out in self.outputs:
                raise IRError(f"cannot erase {node}: %{out.name} is still used")
            self._names.discard(out.name)
        for v in node.inputs:
            v.users.remove(node)
        self.nodes.remove(node)

    def remove_param(self, name: str) -> None:
        """Drop an unused parameter and its data."""
        value = self.params.pop(name)
        if value.users or value in self.outputs:
            raise IRError(f"cannot remove parameter %{name}: it is still used")
        self.weights.pop(name, None)
        self.trainable.discard(name)
        self._names.discard(name)

    def param_to_input(self, name: str) -> Value:
        """Make parameter `name` a graph input (appended last), dropping its data: a training
        step takes the weights it updates as inputs, and its caller owns their values."""
        value = self.params.pop(name)
        self.weights.pop(name, None)
        self.trainable.discard(name)
        self.inputs.append(value)
        return value

    def rename(self, value: Value, name: str) -> None:
        """Give a value a new unique name."""
        self._names.discard(value.name)
        if value.producer is None and value.name in self.params:
            self.params[self._claim(name)] = self.params.pop(value.name)
            if value.name in self.weights:
                self.weights[name] = self.weights.pop(value.name)
            if value.name in self.trainable:
                self.trainable.remove(value.name)
                self.trainable.add(name)
        else:
            self._claim(name)
        value.name = name

    # -- queries -------------------------------------------------------------------------------

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each op the graph has, sorted by op name."""
        return dict(sorted(Counter(n.op for n in self.nodes).items()))

    def trainable_params(self) -> list[Value]:
        """The trainable parameters, in declaration order."""
        return [v for name, v in self.params.items() if name in self.trainable]

    def values(self) -> Iterator[Value]:
        """Every value: inputs, parameters, then node outputs in order."""
        yield from self.inputs
        yield from self.params.values()
        for node in self.nodes:
            yield from node.outputs

    def copy(self) -> Graph:
        """A structural copy sharing weight tensors (weights are immutable by convention).

        The copy holds what the text form holds: attributes and the public meta (keys starting
        with `_` are private to a pass run and stay behind).
        """
        clone = Graph(self.name)
        clone.weights = dict(self.weights)
        clone.trainable = set(self.trainable)
        twin: dict[int, Value] = {}
        for v in self.inputs:
            twin[id(v)] = clone.add_input(v.name, v.type)
        for name, v in self.params.items():
            twin[id(v)] = clone.params[name] = Value(clone._claim(name), v.type)
        for node in self.nodes:
            meta = {k: v for k, v in node.meta.items() if not k.startswith("_")}
            twin_node = Node(
                node.op, [twin[id(v)] for v in node.inputs], deepcopy(node.attrs), deepcopy(meta)
            )
            for v in twin_node.inputs:
                v.users.append(twin_node)
            for v in node.outputs:
                twin[id(v)] = Value(clone._claim(v.name), v.type, twin_node)
                twin_node.outputs.append(twin[id(v)])
            clone.nodes.append(twin_node)
        clone.outputs = [twin[id(v)] for v in self.outputs]
        return clone

    def __str__(self) -> str:
        return print_graph(self)


# -- the text form ----------------------------------------------------------------------------


def format_attr(value: Any) -> str:
    """One attribute value in the text form; floats keep every bit so parsing round-trips."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"attribute value {value!r} is not plain data")


def _plain(value: Any) -> bool:
    try:
        format_attr(value)
        return True
    except TypeError:
        return False


def format_dict(d: dict[str, Any]) -> str:
    """`{key=value, ...}` in key order, skipping private and non-plain entries."""
    items = [f"{k}={format_attr(v)}" for k, v in sorted(d.items()) if not k.startswith("_")]
    return "{" + ", ".join(items) + "}"


def format_node(node: Node) -> str:
    """One node's line (without indentation)."""
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    ins = ", ".join(f"%{v.name}" for v in node.inputs)
    line = f"{outs} = {node.op}({ins})"
    from cgc.ir.ops import get_op

    attrs = get_op(node.op).shown_attrs(node.attrs)
    if attrs:
        line += " " + format_dict(attrs)
    line += " : " + ", ".join(str(v.type) for v in node.outputs)
    meta = {k: v for k, v in node.meta.items() if not k.startswith("_") and _plain(v)}
    if meta:
        line += " #" + format_dict(meta)
    return line


def print_graph(graph: Graph) -> str:
    """The whole graph as text."""
    args = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph @{graph.name}({args}) {{"]
    lines += [
        f"  param {'trainable ' if name in graph.trainable else ''}%{name}: {v.type}"
        for name, v in graph.params.items()
    ]
    lines += [f"  {format_node(n)}" for n in graph.nodes]
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
