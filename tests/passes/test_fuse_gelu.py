"""fuse-gelu: the erf and tanh formulas, with the 0.5 anywhere, become one gelu."""

import math

import pytest

from cgc.ir import parse
from cgc.passes import explain
from cgc.passes.fuse_gelu import gelu_erf

X = "f32[2,4,8]"


def fused(approximate: str, out: str = "y") -> str:
    return (
        f"graph @g(%x: {X}) {{\n"
        f'  %{out} = gelu(%x) {{approximate="{approximate}"}} : {X}\n'
        f"  return %{out}\n}}\n"
    )


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_registry_decomposition_fuses(decomposed, rewrite_text, same_numerics, approximate) -> None:
    g = decomposed("gelu", {"x": X}, approximate=approximate)
    (out,) = (v.name for v in g.outputs)
    assert rewrite_text(str(g), "fuse-gelu") == fused(approximate, out)
    same_numerics(g, "fuse-gelu")


def c(name: str, value: float) -> str:
    return f'  %{name} = constant() {{dtype="f32", shape=[], value={value!r}}} : f32[]\n'


ERF_INNER = {
    "mul by 1/√2": c("k", 1 / math.sqrt(2)) + f"  %s = mul(%x, %k) : {X}\n",
    "div by √2 (f32)": c("k", 1.4142135381698608) + f"  %s = div(%x, %k) : {X}\n",
}
TANH_INNER = {
    "pow(x, 3)": c("three", 3.0) + f"  %cube = pow(%x, %three) : {X}\n",
    "x·x·x": f"  %sq = mul(%x, %x) : {X}\n  %cube = mul(%x, %sq) : {X}\n",
}
HALF = {
    "(x·0.5)·t": f"  %hx = mul(%half, %x) : {X}\n  %y = mul(%t1, %hx) : {X}\n",
    "x·(t·0.5)": f"  %ht = mul(%t1, %half) : {X}\n  %y = mul(%x, %ht) : {X}\n",
    "(x·t)·0.5": f"  %xt = mul(%x, %t1) : {X}\n  %y = mul(%half, %xt) : {X}\n",
}


def erf_form(inner: str, half: str) -> str:
    body = (
        ERF_INNER[inner]
        + f"  %e = erf(%s) : {X}\n"
        + c("one", 1.0)
        + f"  %t1 = add(%one, %e) : {X}\n"
        + c("half", 0.5)
        + HALF[half]
    )
    return f"graph @g(%x: {X}) {{\n{body}  return %y\n}}\n"


def tanh_form(inner: str, half: str) -> str:
    body = (
        TANH_INNER[inner]
        + c("a", 0.044715)
        + f"  %ac = mul(%cube, %a) : {X}\n"
        + f"  %sum = add(%ac, %x) : {X}\n"
        + c("k", math.sqrt(2 / math.pi))
        + f"  %arg = mul(%sum, %k) : {X}\n"
        + f"  %th = tanh(%arg) : {X}\n"
        + c("one", 1.0)
        + f"  %t1 = add(%th, %one) : {X}\n"
        + c("half", 0.5)
        + HALF[half]
    )
    return f"graph @g(%x: {X}) {{\n{body}  return %y\n}}\n"


@pytest.mark.parametrize("inner", sorted(ERF_INNER))
@pytest.mark.parametrize("half", sorted(HALF))
def test_erf_forms_fuse(rewrite_text, same_numerics, inner, half) -> None:
    text = erf_form(inner, half)
    assert rewrite_text(text, "fuse-gelu") == fused("none")
    same_numerics(parse(text), "fuse-gelu")


@pytest.mark.parametrize("inner", sorted(TANH_INNER))
@pytest.mark.parametrize("half", sorted(HALF))
def test_tanh_forms_fuse(rewrite_text, same_numerics, inner, half) -> None:
    text = tanh_form(inner, half)
    assert rewrite_text(text, "fuse-gelu") == fused("tanh")
    same_numerics(parse(text), "fuse-gelu")


def test_a_wrong_constant_does_not_fuse_and_says_why(rewrite_text) -> None:
    text = erf_form("mul by 1/√2", "(x·t)·0.5").replace("value=0.7071067811865475", "value=0.7")
    assert rewrite_text(text, "fuse-gelu") == text
    g = parse(text)
    assert explain(gelu_erf, g.nodes[-1], g) == (
        "at %k: expected constant ≈0.7071067811865475 (rtol 1e-06), found 0.7"
    )


def test_an_intermediate_used_elsewhere_blocks_the_fusion(rewrite_text) -> None:
    text = erf_form("mul by 1/√2", "(x·t)·0.5").replace("return %y", "return %y, %e")
    assert rewrite_text(text, "fuse-gelu") == text
