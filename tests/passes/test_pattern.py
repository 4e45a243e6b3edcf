"""The declarative pattern rewriter: matching rules, explain traces, greedy application."""

import math

import pytest
import torch

from cgc.errors import IRError
from cgc.ir import parse
from cgc.passes import Alt, Const, Op, PassContext, Var, apply_patterns, explain, rewrite
from cgc.passes.pattern import find_match

HEADER = "graph @g(%a: f32[4], %b: f32[4]) {\n"


def graph(body: str, ret: str):
    g = parse(HEADER + body + f"  return {ret}\n}}\n")
    return g, {v.name: v for v in g.values()}


def node(g, name: str):
    return next(n for n in g.nodes if n.outputs[0].name == name)


x, y = Var("x"), Var("y")


def test_commutative_ops_match_either_operand_order() -> None:
    pattern = Op.add(x, Op.mul(y, 2.0))
    g, _ = graph(
        "  %c = constant() {value=2.0} : f32[]\n"
        "  %m = mul(%c, %b) : f32[4]\n"
        "  %s = add(%m, %a) : f32[4]\n",
        "%s",
    )
    m = find_match(pattern, node(g, "s"), g)
    assert (m["x"].name, m["y"].name) == ("a", "b")


def test_non_commutative_ops_keep_their_order() -> None:
    g, _ = graph("  %c = constant() {value=2.0} : f32[]\n  %d = div(%c, %a) : f32[4]\n", "%d")
    assert find_match(x / 2.0, node(g, "d"), g) is None
    assert explain(x / 2.0, node(g, "d"), g) == "at %a: expected a constant, found a graph input"


def test_constants_match_exactly_or_within_tolerance() -> None:
    f32_inv_sqrt2 = float(torch.tensor(1 / math.sqrt(2), dtype=torch.float32))
    g, _ = graph(
        f"  %c = constant() {{value={f32_inv_sqrt2!r}}} : f32[]\n  %m = mul(%a, %c) : f32[4]\n",
        "%m",
    )
    root = node(g, "m")
    assert find_match(x * Const(approx=1 / math.sqrt(2), rtol=1e-6), root, g) is not None
    assert find_match(x * Const(1 / math.sqrt(2)), root, g) is None
    assert find_match(x * Const(where=lambda c: 0.7 < c < 0.8), root, g) is not None
    assert explain(x * Const(approx=0.7072, rtol=1e-6), root, g) == (
        "at %c: expected constant ≈0.7072 (rtol 1e-06), found 0.7071067690849304"
    )


def test_named_constant_binds_its_number() -> None:
    g, _ = graph("  %c = constant() {value=0.25} : f32[]\n  %m = mul(%a, %c) : f32[4]\n", "%m")
    m = find_match(x * Const(name="scale"), node(g, "m"), g)
    assert m.number("scale") == 0.25 and m["scale"].name == "c"


def test_one_element_parameter_with_data_is_a_constant() -> None:
    g = parse(
        "graph @g(%a: f32[4]) {\n  param %s: f32[1]\n  %m = mul(%a, %s) : f32[4]\n  return %m\n}\n"
    )
    root = g.nodes[0]
    assert find_match(x * 3.0, root, g) is None  # no data: unknown
    g.weights["s"] = torch.tensor([3.0])
    assert find_match(x * 3.0, root, g) is not None


def test_the_same_var_must_bind_the_same_value() -> None:
    g, _ = graph(
        "  %same = mul(%a, %a) : f32[4]\n  %other = mul(%a, %b) : f32[4]\n", "%same, %other"
    )
    assert find_match(x * x, node(g, "same"), g)["x"].name == "a"
    assert find_match(x * x, node(g, "other"), g) is None
    assert explain(x * x, node(g, "other"), g) == "at %b: x is already %a"


def test_a_reused_sub_pattern_must_be_one_shared_node() -> None:
    d = x - y
    g, _ = graph("  %d1 = sub(%a, %b) : f32[4]\n  %sq = mul(%d1, %d1) : f32[4]\n", "%sq")
    assert find_match(d * d, node(g, "sq"), g) is not None
    g, _ = graph(
        "  %d1 = sub(%a, %b) : f32[4]\n  %d2 = sub(%a, %b) : f32[4]\n"
        "  %two = mul(%d1, %d2) : f32[4]\n",
        "%two",
    )
    assert explain(d * d, node(g, "two"), g) == "at %d2: expected the same value as %d1"


def test_attribute_and_node_constraints() -> None:
    g, _ = graph("  %t = transpose(%a) {perm=[0]} : f32[4]\n", "%t")

    def rank_one(n) -> bool:
        """a rank-1 result"""
        return n.output.type.rank == 1

    assert find_match(Op.transpose(x, perm=[0], where=rank_one), node(g, "t"), g) is not None
    assert explain(Op.transpose(x, perm=[1, 0]), node(g, "t"), g) == (
        "at %t: expected perm=[1, 0], found [0]"
    )

    def wide(v) -> bool:
        """at least 8 elements"""
        return v.type.numel >= 8

    assert explain(Op.transpose(Var("x", where=wide)), node(g, "t"), g) == (
        "at %a: expected x: at least 8 elements"
    )


def test_explain_merges_alternative_ops_at_one_value() -> None:
    g, _ = graph("  %add_3 = add(%a, %b) : f32[4]\n  %mul_3 = neg(%add_3) : f32[4]\n", "%mul_3")
    pattern = Op.neg(Alt(x * 2.0, x / 2.0))
    assert explain(pattern, node(g, "mul_3"), g) == "at %add_3: expected op div or mul, found add"


def test_explain_of_a_match_lists_the_bindings() -> None:
    g, _ = graph("  %s = add(%a, %b) : f32[4]\n", "%s")
    assert explain(x + y, node(g, "s"), g) == "matched <match at %s: x=%a, y=%b>"


def test_operator_sugar_builds_the_same_ops() -> None:
    assert repr(0.5 * x * (1.0 + y) - x / 2.0) == "sub(mul(mul(0.5, x), add(1.0, y)), div(x, 2.0))"
    assert repr(-(x**3.0) | x) == "neg(pow(x, 3.0)) | x"


def test_unknown_ops_fail_where_the_pattern_is_written() -> None:
    with pytest.raises(Exception, match="unknown op 'addd'"):
        Op.addd(x, y)


# -- rewriting ----------------------------------------------------------------------------------


@rewrite(x * 2.0 + 1.0)
def fma(m, g):
    """x·2 + 1 = (x + x) + 1"""
    return g.call("add", g.call("add", m["x"], m["x"]), g.constant(1.0))


@rewrite(x * 2.0)
def double_to_add(m, g):
    """x·2 = x + x"""
    return g.call("add", m["x"], m["x"])


def test_rewrite_replaces_keeps_root_meta_and_erases_dead_interior() -> None:
    text = (
        "graph @g(%a: f32[4]) {\n"
        '  %c = constant() {value=2.0} : f32[] #{scope="h.0"}\n'
        '  %m = mul(%a, %c) : f32[4] #{scope="h.0.mlp", source="m.py:7"}\n'
        "  %n = neg(%m) : f32[4]\n"
        "  return %n\n}\n"
    )
    g = parse(text)
    assert apply_patterns(g, [double_to_add]) == {"double-to-add": 1}
    assert str(g) == (
        "graph @g(%a: f32[4]) {\n"
        '  %add = add(%a, %a) : f32[4] #{scope="h.0.mlp", source="m.py:7"}\n'
        "  %n = neg(%add) : f32[4]\n"
        "  return %n\n}\n"
    )


def test_interior_node_used_outside_the_match_blocks_the_rewrite() -> None:
    g, _ = graph(
        "  %c = constant() {value=2.0} : f32[]\n  %one = constant() {value=1.0} : f32[]\n"
        "  %m = mul(%a, %c) : f32[4]\n  %s = add(%m, %one) : f32[4]\n  %n = neg(%m) : f32[4]\n",
        "%s, %n",
    )
    assert explain(fma, node(g, "s"), g) == "at %m: also used outside the match, by %n = neg(…)"
    assert apply_patterns(g, [fma]) == {}


def test_interior_node_returned_by_the_graph_blocks_the_rewrite() -> None:
    g, _ = graph(
        "  %c = constant() {value=2.0} : f32[]\n  %one = constant() {value=1.0} : f32[]\n"
        "  %m = mul(%a, %c) : f32[4]\n  %s = add(%m, %one) : f32[4]\n",
        "%s, %m",
    )
    assert (
        explain(fma, node(g, "s"), g) == "at %m: also used outside the match, by the graph outputs"
    )


def test_rewrite_may_not_change_the_root_type() -> None:
    @rewrite(x + y)
    def widen(m, g):
        """x + y = concat(x, y), wrongly"""
        return g.call("concat", m["x"], m["y"], axis=0)

    g, _ = graph("  %s = add(%a, %b) : f32[4]\n", "%s")
    with pytest.raises(
        IRError, match=r"rewrite widen replaced %s: f32\[4\] with %concat: f32\[8\]"
    ):
        apply_patterns(g, [widen])


def test_rewrite_limit_in_the_context_stops_rewriting() -> None:
    g, _ = graph(
        "  %c = constant() {value=2.0} : f32[]\n"
        "  %m1 = mul(%a, %c) : f32[4]\n  %m2 = mul(%b, %c) : f32[4]\n",
        "%m1, %m2",
    )
    ctx = PassContext(rewrite_limit=1)
    assert apply_patterns(g, [double_to_add], ctx) == {"double-to-add": 1}
    assert ctx.rewrites == 1
    assert g.op_counts() == {"add": 1, "constant": 1, "mul": 1}


def test_rewrites_run_to_a_fixpoint(rewrite_text) -> None:
    assert rewrite_text(
        "graph @g(%a: f32[4]) {\n"
        "  %r1 = reshape(%a) {shape=[2, 2]} : f32[2,2]\n"
        "  %r2 = reshape(%r1) {shape=[4, 1]} : f32[4,1]\n"
        "  %r3 = reshape(%r2) {shape=[1, 4]} : f32[1,4]\n"
        "  %r4 = reshape(%r3) {shape=[4]} : f32[4]\n"
        "  return %r4\n}\n",
        "canonicalize",
    ) == ("graph @g(%a: f32[4]) {\n  return %a\n}\n")
