"""Per-node comparison: values paired by name and by scope; the first diverging node."""

from __future__ import annotations

import torch

from cgc.debug import compare_graphs, node_values
from cgc.debug.node_compare import pair_values
from cgc.ir import parse
from cgc.passes import PassManager

BEFORE = """\
graph @g(%x: f32[2,4]) {
  %a = exp(%x) : f32[2,4] #{scope="m.pre", source="m.py:3"}
  %c = constant() {dtype="f32", shape=[], value=0.7071067811865476} : f32[] #{scope="m.act"}
  %s = mul(%a, %c) : f32[2,4] #{scope="m.act", source="m.py:4"}
  %e = erf(%s) : f32[2,4] #{scope="m.act", source="m.py:4"}
  %one = constant() {dtype="f32", shape=[], value=1.0} : f32[] #{scope="m.act"}
  %p = add(%e, %one) : f32[2,4] #{scope="m.act", source="m.py:4"}
  %h = constant() {dtype="f32", shape=[], value=0.5} : f32[] #{scope="m.act"}
  %ah = mul(%a, %h) : f32[2,4] #{scope="m.act", source="m.py:4"}
  %g = mul(%ah, %p) : f32[2,4] #{scope="m.act", source="m.py:4"}
  %y = neg(%g) : f32[2,4] #{scope="m.post", source="m.py:5"}
  return %y
}
"""


def test_values_pair_by_name_then_by_scope() -> None:
    before = parse(BEFORE)
    after = PassManager("fuse-gelu").run(parse(BEFORE))
    pairs = [(v.name, other.name, how) for v, other, how in pair_values(before, after)]
    assert pairs == [("a", "a", "name"), ("gelu", "g", "scope"), ("y", "y", "name")]
    x = [torch.randn(2, 4)]
    report = compare_graphs(before, after, x, rtol=1e-6, atol=1e-6)
    assert report.ok and report.unpaired == 0 and report.first_divergence is None


def test_the_first_diverging_node_is_named_with_scope_and_source() -> None:
    before = parse(BEFORE)
    wrong = parse(BEFORE.replace("%ah = mul(%a, %h)", "%ah = mul(%x, %h)"))
    report = compare_graphs(before, wrong, [torch.rand(2, 4)], rtol=1e-5, atol=1e-5)
    first = report.first_divergence
    assert (first.name, first.op, first.scope, first.source) == ("ah", "mul", "m.act", "m.py:4")
    assert [r.name for r in report.rows if not r.ok] == ["ah", "g", "y"]
    lines = report.text().splitlines()
    assert lines[0] == (
        "per-node comparison: 10 values paired (10 by name, 0 by scope), 0 unpaired; 3 out of "
        "tolerance |got - ref| <= 1e-05 + 1e-05·|ref|"
    )
    assert lines[1:4] == ["first divergence: %ah = mul", "  scope   m.act", "  source  m.py:4"]


def test_a_name_reused_for_another_computation_is_not_paired() -> None:
    before = parse(BEFORE)
    after = parse(BEFORE.replace("%ah = mul(%a, %h)", "%ah = add(%a, %h)"))
    assert "ah" not in [v.name for v, _, _ in pair_values(before, after)]


def test_backend_values_match_the_interpreter_node_by_node(tiny) -> None:
    graph = PassManager("default").run(tiny.graph())
    ort = node_values(graph, tiny.inputs, "onnxruntime")
    assert set(ort) == {v.name for n in graph.nodes for v in n.outputs}
    report = compare_graphs(
        graph, graph, tiny.inputs, rtol=1e-5, atol=1e-5, candidate_backend="onnxruntime"
    )
    assert report.ok and len(report.rows) == len(ort) == 31
