"""The verifier names the first structural or type problem."""

import pytest

from cgc.errors import IRError
from cgc.ir import TensorType, parse, verify

GOOD = """\
graph @g(%x: f32[2,3]) {
  %y = neg(%x) : f32[2,3]
  return %y
}
"""


def test_good_graph_verifies() -> None:
    verify(parse(GOOD))


def test_wrong_result_type_is_reported() -> None:
    g = parse(GOOD)
    g.nodes[0].outputs[0].type = TensorType((3, 2), "f32")
    with pytest.raises(IRError, match=r"neg defining %y: result types f32\[3,2\] disagree"):
        verify(g)


def test_use_before_def_is_reported() -> None:
    g = parse(GOOD)
    z = g.call("exp", g.nodes[0].output)
    g.nodes.insert(0, g.nodes.pop())  # move exp before its operand's producer
    with pytest.raises(IRError, match="%y is used before it is defined"):
        verify(g)
    assert z.producer is g.nodes[0]


def test_mixed_dtypes_need_a_cast() -> None:
    text = GOOD.replace(
        "%y = neg(%x) : f32[2,3]",
        '%c = constant() {dtype="f16", value=1.0} : f16[]\n  %y = add(%x, %c) : f32[2,3]',
    )
    with pytest.raises(IRError, match="add defining %y: add: operand dtypes differ"):
        verify(parse(text))


def test_undefined_output_is_reported() -> None:
    g = parse(GOOD)
    g.outputs.append(g.add_param("p", TensorType((1,), "f32")))
    del g.params["p"]
    with pytest.raises(IRError, match="graph output %p is not defined"):
        verify(g)


def test_trainable_names_must_be_float_parameters() -> None:
    g = parse(GOOD)
    g.trainable.add("x")  # a graph input, not a parameter
    with pytest.raises(IRError, match="trainable %x is not a parameter"):
        verify(g)
    g = parse(GOOD)
    g.add_param("ids", TensorType((2,), "i64"))
    g.trainable.add("ids")
    with pytest.raises(IRError, match=r"trainable parameter %ids is i64\[2\], not float"):
        verify(g)


def test_renaming_and_removing_a_trainable_parameter_keep_the_mark() -> None:
    g = parse(GOOD)
    w = g.add_param("w", TensorType((2,), "f32"), trainable=True)
    g.rename(w, "w2")
    assert g.trainable == {"w2"}
    g.remove_param("w2")
    assert g.trainable == set()
    verify(g)
