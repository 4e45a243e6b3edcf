"""fuse-layer-norm: every decomposition form becomes one layer_norm."""

import pytest

from cgc.ir import parse
from cgc.passes import explain
from cgc.passes.fuse_layer_norm import layer_norm_plain

X = "f32[2,4,8]"


@pytest.mark.parametrize(
    ("params", "fused"),
    [
        ({"w": "f32[8]", "b": "f32[8]"}, "layer_norm(%x, %w, %b)"),
        ({"w": "f32[8]"}, "layer_norm(%x, %w)"),
        ({}, "layer_norm(%x)"),
    ],
)
def test_registry_decomposition_fuses(decomposed, rewrite_text, params, fused) -> None:
    g = decomposed("layer_norm", {"x": X}, params, eps=1e-5)
    decls = "".join(f"  param %{n}: {t}\n" for n, t in params.items())
    (out,) = (v.name for v in g.outputs)
    assert rewrite_text(str(g), "fuse-layer-norm") == (
        f"graph @g(%x: {X}) {{\n{decls}"
        f"  %{out} = {fused} {{eps=1e-05}} : {X}\n"
        f"  return %{out}\n}}\n"
    )


def test_registry_decomposition_keeps_numerics(decomposed, same_numerics) -> None:
    g = decomposed("layer_norm", {"x": X}, {"w": "f32[8]", "b": "f32[8]"}, eps=1e-3)
    same_numerics(g, "fuse-layer-norm")
    assert g.op_counts() == {"layer_norm": 1}
    assert g.nodes[0].attrs == {"eps": 1e-3}


MEAN = (
    "  %mean = reduce_mean(%x) {axes=[AXES], keepdim=true} : f32[2,4,1]\n"
    "  %d = sub(%x, %mean) : f32[2,4,8]\n"
)
VARIANCES = {
    "mean of d·d": "  %sq = mul(%d, %d) : f32[2,4,8]\n"
    "  %var = reduce_mean(%sq) {axes=[AXES], keepdim=true} : f32[2,4,1]\n",
    "mean of d**2": '  %two = constant() {dtype="f32", shape=[], value=2.0} : f32[]\n'
    "  %sq = pow(%d, %two) : f32[2,4,8]\n"
    "  %var = reduce_mean(%sq) {axes=[AXES], keepdim=true} : f32[2,4,1]\n",
    "var(x)": "  %var = var(%x) {axes=[AXES], correction=0, keepdim=true} : f32[2,4,1]\n",
}
NORMALIZATIONS = {
    "rsqrt": "  %r = rsqrt(%ve) : f32[2,4,1]\n  %n = mul(%r, %d) : f32[2,4,8]\n",
    "reciprocal sqrt": "  %s = sqrt(%ve) : f32[2,4,1]\n  %r = reciprocal(%s) : f32[2,4,1]\n"
    "  %n = mul(%d, %r) : f32[2,4,8]\n",
    "div sqrt": "  %s = sqrt(%ve) : f32[2,4,1]\n  %n = div(%d, %s) : f32[2,4,8]\n",
}


def hand_written(variance: str, normalization: str, axes: str = "-1") -> str:
    text = (
        MEAN
        + VARIANCES[variance]
        + '  %eps = constant() {dtype="f32", shape=[], value=1e-06} : f32[]\n'
        + "  %ve = add(%eps, %var) : f32[2,4,1]\n"
        + NORMALIZATIONS[normalization]
        + "  %y = mul(%w, %n) : f32[2,4,8]\n"
        + "  %z = add(%b, %y) : f32[2,4,8]\n"
    ).replace("AXES", axes)
    return (
        "graph @g(%x: f32[2,4,8]) {\n  param %w: f32[8]\n  param %b: f32[8]\n"
        + text
        + "  return %z\n}\n"
    )


FUSED = (
    "graph @g(%x: f32[2,4,8]) {\n  param %w: f32[8]\n  param %b: f32[8]\n"
    "  %z = layer_norm(%x, %w, %b) {eps=1e-06} : f32[2,4,8]\n"
    "  return %z\n}\n"
)


@pytest.mark.parametrize("variance", sorted(VARIANCES))
@pytest.mark.parametrize("normalization", sorted(NORMALIZATIONS))
def test_hand_written_forms_fuse(rewrite_text, same_numerics, variance, normalization) -> None:
    text = hand_written(variance, normalization)
    assert rewrite_text(text, "fuse-layer-norm") == FUSED
    same_numerics(parse(text), "fuse-layer-norm")


def test_positive_last_axis_counts_as_last(rewrite_text) -> None:
    assert rewrite_text(hand_written("var(x)", "rsqrt", axes="2"), "fuse-layer-norm") == FUSED


def test_normalising_another_axis_does_not_fuse(rewrite_text) -> None:
    text = hand_written("mean of d·d", "rsqrt").replace(
        "%mean = reduce_mean(%x) {axes=[-1], keepdim=true} : f32[2,4,1]",
        "%mean = reduce_mean(%x) {axes=[-1, 1], keepdim=true} : f32[2,1,1]",
    )
    g = parse(text)
    assert rewrite_text(text, "fuse-layer-norm") == text
    root = next(n for n in g.nodes if n.output.name == "n")
    assert explain(layer_norm_plain, root, g) == (
        "at %mean: expected a reduction over the last axis only, keeping it "
        "(axes=[-1] or [rank-1], keepdim)"
    )


def test_statistics_used_elsewhere_block_the_fusion(rewrite_text) -> None:
    text = hand_written("mean of d·d", "rsqrt").replace("return %z", "return %z, %var")
    assert rewrite_text(text, "fuse-layer-norm") == text


def test_scale_must_be_a_vector_over_the_last_axis(rewrite_text) -> None:
    text = hand_written("mean of d·d", "rsqrt").replace("param %w: f32[8]", "param %w: f32[4,8]")
    fused = rewrite_text(text, "fuse-layer-norm")
    assert "  %layer_norm = layer_norm(%x) {eps=1e-06} : f32[2,4,8]\n" in fused
    assert "  %y = mul(%w, %layer_norm) : f32[2,4,8]\n" in fused
