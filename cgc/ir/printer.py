"""Text form of a graph: an MLIR-like listing that `cgc.ir.parse` reads back exactly.

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
from typing import Any

from cgc.ir.graph import Graph, Node
from cgc.ir.ops import get_op


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
