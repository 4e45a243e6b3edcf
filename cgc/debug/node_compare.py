"""Per-node comparison: run two graphs on the same inputs and compare every value they share.

Values are paired by name first: a pass that leaves a node alone keeps its output's name, and
graph outputs keep their names through rewrites (an IR invariant); a pair must also agree on
type, scope and op (graph outputs excepted), since fresh names can be reused. A value a rewrite
replaced has a new name; it is paired by scope instead: the last value computed in a module
scope of one graph with the last value of that scope in the other, when their types agree (a
fused `attention` and the head merge it replaced both end their `attn` scope).

The report names the first value, in the candidate's order, that leaves tolerance: its op,
scope and the user's source line. Values can come from the interpreter or from a backend: the
graph is compiled with every value marked as an output, as Polygraphy does (which may keep the
backend from fusing across them).
"""

from __future__ import annotations

import linecache
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cgc.debug.numerics import Comparison, compare
from cgc.ir import Graph, Node, Value, interpret


def node_values(
    graph: Graph, inputs: Sequence[torch.Tensor], backend: str | None = None
) -> dict[str, torch.Tensor]:
    """Every value a node computes, by name: from the interpreter, or from `backend` running a
    copy of the graph whose outputs are all of them."""
    if backend is None:
        values: dict[str, torch.Tensor] = {}

        def keep(node: Node, outs: Sequence[torch.Tensor]) -> None:
            for v, t in zip(node.outputs, outs, strict=True):
                values[v.name] = t

        interpret(graph, *inputs, hook=keep)
        return values
    from cgc.driver import compile_graph

    marked = graph.copy()
    marked.outputs = [v for n in marked.nodes for v in n.outputs]
    got = compile_graph(marked, backend, {"purpose": "per-node comparison"}).run(*inputs)
    return {v.name: t for v, t in zip(marked.outputs, got, strict=True)}


@dataclass(frozen=True)
class NodeDiff:
    """One paired value: where it comes from in the candidate, its counterpart, the error."""

    name: str
    op: str
    scope: str
    source: str
    reference: str  # the paired value's name in the reference graph
    matched_by: str  # "name" or "scope"
    comparison: Comparison

    @property
    def ok(self) -> bool:
        return self.comparison.ok


def _scope_ends(graph: Graph) -> dict[str, Value]:
    """The last value computed in each scope."""
    ends: dict[str, Value] = {}
    for node in graph.nodes:
        scope = node.meta.get("scope")
        if scope is not None:
            ends[scope] = node.outputs[-1]
    return ends


def _same_value(v: Value, other: Value, output: bool) -> bool:
    """Two values of one name are one computation: same type and scope, and same op unless
    both are graph outputs (which keep their names when rewritten). A rewrite's fresh name can
    reuse the name of a value the other graph still has, so the name alone does not suffice."""
    a, b = v.producer, other.producer
    return (
        v.type == other.type
        and a.meta.get("scope") == b.meta.get("scope")
        and (output or a.op == b.op)
    )


def pair_values(reference: Graph, candidate: Graph) -> list[tuple[Value, Value, str]]:
    """(candidate value, reference value, "name" | "scope") in the candidate's order."""
    ref_values = {v.name: v for n in reference.nodes for v in n.outputs}
    outputs = {v.name for v in reference.outputs} & {v.name for v in candidate.outputs}
    pairs: dict[str, tuple[Value, Value, str]] = {}
    for node in candidate.nodes:
        for v in node.outputs:
            other = ref_values.get(v.name)
            if other is not None and _same_value(v, other, v.name in outputs):
                pairs[v.name] = (v, other, "name")
    taken = {other.name for _, other, _ in pairs.values()}
    ref_ends = _scope_ends(reference)
    for scope, v in _scope_ends(candidate).items():
        other = ref_ends.get(scope)
        if (
            other is not None
            and v.name not in pairs
            and other.name not in taken
            and other.type == v.type
        ):
            pairs[v.name] = (v, other, "scope")
    order = {v.name: i for i, v in enumerate(v for n in candidate.nodes for v in n.outputs)}
    return sorted(pairs.values(), key=lambda item: order[item[0].name])


def compare_values(
    reference: Graph,
    reference_values: dict[str, torch.Tensor],
    candidate: Graph,
    candidate_values: dict[str, torch.Tensor],
    *,
    rtol: float,
    atol: float,
) -> NodeReport:
    """Compare the values two graphs computed (as `node_values` returns them), pair by pair."""
    rows = []
    for v, other, how in pair_values(reference, candidate):
        node = v.producer
        c = compare(
            v.name,
            candidate_values[v.name],
            reference_values[other.name],
            rtol=rtol,
            atol=atol,
            detail=False,
        )
        scope, source = node.meta.get("scope", ""), node.meta.get("source", "")
        rows.append(NodeDiff(v.name, node.op, scope, source, other.name, how, c))
    computed = sum(len(n.outputs) for n in candidate.nodes)
    return NodeReport(rows, computed - len(rows), rtol, atol)


def compare_graphs(
    reference: Graph,
    candidate: Graph,
    inputs: Sequence[torch.Tensor],
    *,
    rtol: float,
    atol: float,
    reference_backend: str | None = None,
    candidate_backend: str | None = None,
) -> NodeReport:
    """Run both graphs on `inputs` (interpreter, or the named backends) and compare every
    value they share; `compare_graphs(g, g, x, candidate_backend="onnxruntime")` checks a
    backend against the interpreter node by node."""
    ref = node_values(reference, inputs, reference_backend)
    got = node_values(candidate, inputs, candidate_backend)
    return compare_values(reference, ref, candidate, got, rtol=rtol, atol=atol)


def source_line(source: str) -> str:
    """`file.py:12` followed by that line of code, when the file can be read."""
    path, _, line = source.rpartition(":")
    code = linecache.getline(path, int(line)).strip() if path and line.isdigit() else ""
    return f"{source}: {code}" if code else source


@dataclass
class NodeReport:
    """Paired values in the candidate's order, and how many it computed without a pair."""

    rows: list[NodeDiff]
    unpaired: int
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def first_divergence(self) -> NodeDiff | None:
        """The first value out of tolerance, in the candidate's order."""
        return next((r for r in self.rows if not r.ok), None)

    def text(self, limit: int = 8) -> str:
        """A summary, the first diverging value in full, and the first `limit` diverging rows."""
        by_scope = sum(r.matched_by == "scope" for r in self.rows)
        bad = [r for r in self.rows if not r.ok]
        lines = [
            f"per-node comparison: {len(self.rows)} values paired ({len(self.rows) - by_scope} "
            f"by name, {by_scope} by scope), {self.unpaired} unpaired; {len(bad)} out of "
            f"tolerance |got - ref| <= {self.atol:g} + {self.rtol:g}·|ref|"
        ]
        first = self.first_divergence
        if first is None:
            lines.append("no value diverges")
            return "\n".join(lines)
        c = first.comparison
        paired = "" if first.matched_by == "name" else f", paired by scope with %{first.reference}"
        lines += [
            f"first divergence: %{first.name} = {first.op}{paired}",
            f"  scope   {first.scope or '(top level)'}",
            f"  source  {source_line(first.source) if first.source else '(unknown)'}",
            f"  error   max abs {c.max_abs:.3e}, max rel {c.max_rel:.3e} at "
            f"[{','.join(map(str, c.where))}]" + (f" ({c.problem})" if c.problem else ""),
            f"  {'value':<20} {'op':<12} {'max abs':>10} {'max rel':>10}  scope",
        ]
        for r in bad[:limit]:
            lines.append(
                f"  {'%' + r.name:<20} {r.op:<12} {r.comparison.max_abs:>10.3e} "
                f"{r.comparison.max_rel:>10.3e}  {r.scope}"
            )
        if len(bad) > limit:
            lines.append(f"  ... {len(bad) - limit} more out of tolerance")
        return "\n".join(lines)
