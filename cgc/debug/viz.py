"""Graph pictures: a graph as Graphviz DOT, rendered by `dot` when it is installed.

Nodes are filled by op: each fused op (attention, layer_norm, gelu, linear, ...) has its own
colour, primitives are white. Nodes annotated with a pipeline stage (`meta["stage"]`, set by
the partitioning passes) are drawn inside one shaded box per stage. Parameters are left out:
a weight is an input of the node that reads it, listed in its label.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from cgc.errors import CgcError, InputError
from cgc.ir import Graph, Node, get_op

FUSED_COLOURS = ["#f4a582", "#92c5de", "#b8e186", "#fdb863", "#c2a5cf", "#80cdc1", "#de77ae"]
STAGE_COLOURS = ["#f7f7f7", "#e8f1fa", "#fdf0e6", "#eef7e6", "#f5ecf7", "#fafae0"]
FORMATS = ("dot", "svg", "png", "pdf")
_TERMINAL = 'shape=ellipse, fillcolor="#dddddd"'


def _quote(text: str) -> str:
    return json.dumps(text)  # DOT strings escape like JSON ones


def _label(node: Node, params: set[str]) -> str:
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    weights = [v.name.rsplit(".", 1)[-1] for v in node.inputs if v.name in params]
    lines = [node.op, outs, " ".join(str(v.type) for v in node.outputs)]
    if weights:
        lines.append("params: " + ", ".join(weights))
    return "\n".join(lines)


def fused_colours(graph: Graph) -> dict[str, str]:
    """A fill colour for each fused op the graph uses, in order of name."""
    fused = sorted({n.op for n in graph.nodes if get_op(n.op).category == "fused"})
    return {op: FUSED_COLOURS[i % len(FUSED_COLOURS)] for i, op in enumerate(fused)}


def _stage_order(item: tuple[object, list[Node]]) -> tuple:
    """Integer stages in numeric order, then any others by name."""
    stage = item[0]
    return (not isinstance(stage, int), stage if isinstance(stage, int) else 0, str(stage))


def to_dot(graph: Graph) -> str:
    """The graph as DOT text: inputs and outputs as ellipses, nodes as boxes, stages as boxes
    around their nodes, and a legend of the fused-op colours."""
    params = set(graph.params)
    colours = fused_colours(graph)
    lines = [
        f"digraph {_quote(graph.name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", '
        "fontsize=10];",
        '  edge [color="#555555", arrowsize=0.6];',
    ]
    for v in graph.inputs:
        label = _quote(f"%{v.name}\n{v.type}")
        lines.append(f"  {_quote('in:' + v.name)} [label={label}, {_TERMINAL}];")
    stages: dict[object, list[Node]] = {}
    for node in graph.nodes:
        stages.setdefault(node.meta.get("stage"), []).append(node)

    def node_line(node: Node, indent: str) -> str:
        fill = colours.get(node.op, "white")
        tip = node.meta.get("source") or node.meta.get("scope") or node.op
        return (
            f"{indent}{_quote(node.outputs[0].name)} [label={_quote(_label(node, params))}, "
            f"fillcolor={_quote(fill)}, tooltip={_quote(str(tip))}];"
        )

    for i, (stage, nodes) in enumerate(sorted(stages.items(), key=_stage_order)):
        if stage is None:
            lines += [node_line(n, "  ") for n in nodes]
            continue
        lines += [
            f"  subgraph {_quote(f'cluster_stage_{stage}')} {{",
            f"    label={_quote(f'stage {stage}')}; style=filled; "
            f'fillcolor={_quote(STAGE_COLOURS[i % len(STAGE_COLOURS)])}; color="#999999";',
        ]
        lines += [node_line(n, "    ") for n in nodes]
        lines.append("  }")
    producer = {v.name: n.outputs[0].name for n in graph.nodes for v in n.outputs}
    producer.update({v.name: "in:" + v.name for v in graph.inputs})
    for node in graph.nodes:
        for v in node.inputs:
            if v.name in producer:
                lines.append(f"  {_quote(producer[v.name])} -> {_quote(node.outputs[0].name)};")
    for v in graph.outputs:
        out = "out:" + v.name
        lines.append(f"  {_quote(out)} [label={_quote('return %' + v.name)}, {_TERMINAL}];")
        lines.append(f"  {_quote(producer.get(v.name, v.name))} -> {_quote(out)};")
    if colours:
        rows = "".join(f'<TR><TD BGCOLOR="{c}">{op}</TD></TR>' for op, c in colours.items())
        lines.append(
            f'  legend [shape=plaintext, style="", label=<<TABLE BORDER="0" CELLBORDER="1" '
            f'CELLSPACING="0"><TR><TD><B>fused ops</B></TD></TR>{rows}</TABLE>>];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(graph: Graph, path: str | Path) -> tuple[Path, str]:
    """Write the picture: `.dot` as DOT text; other suffixes (.svg, .png, .pdf) through
    Graphviz `dot`, or as DOT text beside the path when `dot` is not installed.

    Returns the file written and the format it holds ("dot" or the suffix).
    """
    path = Path(path)
    text = to_dot(graph)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise InputError(
            f"{path}: cannot draw a {path.suffix or 'suffix-less'} file; "
            f"name it .{', .'.join(FORMATS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot" or shutil.which("dot") is None:
        target = path if fmt == "dot" else path.with_suffix(".dot")
        target.write_text(text)
        return target, "dot"
    done = subprocess.run(
        ["dot", f"-T{fmt}", "-o", str(path)], input=text.encode(), capture_output=True
    )
    if done.returncode != 0:
        first = done.stderr.decode(errors="replace").strip().splitlines()
        raise CgcError(f"Graphviz dot could not write {path}: {first[0] if first else fmt}")
    return path, fmt


def load_graph(
    spec: str,
    pipeline: str | None = None,
    *,
    batch: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
) -> Graph:
    """The graph to draw: a .cgc file as written (unless `pipeline` is given), or MODEL traced
    or imported and run through `pipeline` (default: the default pipeline)."""
    from cgc import driver
    from cgc.debug.irfile import read_ir

    if spec.endswith(".cgc") or spec == "-":
        graph = read_ir(spec)
    else:
        if driver.is_onnx(spec):
            graph = driver.load_onnx(spec, input_shapes)
        else:
            loaded = driver.load_model(spec, batch=batch, seq_len=seq_len, seed=seed)
            graph = driver.trace(loaded.module, loaded.example_inputs)
        pipeline = "default" if pipeline is None else pipeline
    return driver.run_passes(graph, pipeline) if pipeline else graph
