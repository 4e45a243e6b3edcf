"""Printer and parser: exact round trip and clear errors."""

import pytest

from cgc.errors import IRError
from cgc.ir import parse, verify

TEXT = """\
graph @block(%x: f32[2,4,8], %ids: i64[2,4]) {
  param trainable %wte: f32[16,8]
  param trainable %w: f32[8]
  param %mask: bool[4,4]
  %emb = embedding(%wte, %ids) : f32[2,4,8] #{scope="transformer.wte", source="m.py:10"}
  %h = add(%x, %emb) : f32[2,4,8]
  %ln = layer_norm(%h, %w) {eps=1e-05} : f32[2,4,8] #{scope="transformer.h.0.ln_1"}
  %ninf = constant() {dtype="f32", shape=[], value=-inf} : f32[]
  %a = attention(%ln, %ln, %ln) {causal=true, num_heads=2, scale=0.35355339059327373} : f32[2,4,8]
  %s = slice(%a) {axis=1, end=4, start=1, step=2} : f32[2,2,8]
  %r = reshape(%s) {shape=[4, 8]} : f32[4,8]
  %name = constant() {dtype="bool", shape=[4, 4], value=true} : bool[4,4]
  %sel = where(%name, %mask, %mask) : bool[4,4]
  return %r, %sel
}
"""


def test_round_trip_is_exact() -> None:
    g = parse(TEXT)
    verify(g)
    assert str(g) == TEXT
    assert str(parse(str(g))) == TEXT
    assert g.trainable == {"wte", "w"} and g.copy().trainable == {"wte", "w"}


def test_op_counts_sorted_by_name() -> None:
    assert parse(TEXT).op_counts() == {
        "add": 1,
        "attention": 1,
        "constant": 2,
        "embedding": 1,
        "layer_norm": 1,
        "reshape": 1,
        "slice": 1,
        "where": 1,
    }


def test_copy_is_independent() -> None:
    g = parse(TEXT)
    c = g.copy()
    c.outputs = c.outputs[:1]
    c.erase_node(c.nodes[-1])
    assert str(g) == TEXT
    assert str(c) != TEXT


def test_copy_prints_alike_and_leaves_private_meta() -> None:
    g = parse(TEXT)
    g.nodes[0].meta["_match"] = object()
    c = g.copy()
    assert str(c) == TEXT
    assert c.nodes[0].meta == {"scope": "transformer.wte", "source": "m.py:10"}
    assert all(u in c.nodes for v in c.values() for u in v.users)
    assert c.weights.keys() == g.weights.keys()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("graph @g() {\n  return %x\n}\n", "line 2: %x is used before it is defined"),
        (
            "graph @g(%x: f32[2]) {\n  %y = nosuchop(%x) : f32[2]\n  return %y\n}\n",
            "line 2: unknown op 'nosuchop'",
        ),
        ("graph @g(%x: q7[2]) {\n  return %x\n}\n", "line 1: unknown dtype 'q7'"),
        ("graph @g(%x: f32[2]) {\n  %y = neg(%x) : f32[2]\n", "expected a node, 'param' or"),
        ("graph @g(%x: f32[2]) {\n  $\n}", "line 2: unexpected character '$'"),
        (
            "graph @g(%x: f32[2], %x: f32[2]) {\n  return %x\n}\n",
            "value %x is defined twice",
        ),
        (
            "graph @g() {\n  param trainable %ids: i64[4]\n  return %ids\n}\n",
            "line 2: parameter %ids: a i64[4] cannot be trainable (not floating point)",
        ),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(IRError) as err:
        parse(text)
    assert message in str(err.value)
