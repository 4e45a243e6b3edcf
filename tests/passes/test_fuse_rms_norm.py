"""fuse-rms-norm: x / √(mean(x²) + ε) · w becomes one rms_norm op, in every way it is written."""

import pytest

from cgc.ir import parse

X = "f32[2,4,8]"


def rms(square: str, normalize: str, scale: str | None = "w·y") -> str:
    """An RMS norm as models write it; `square` "x·x" or "x**2", `normalize` "rsqrt",
    "reciprocal" or "div", `scale` "w·y", "y·w" or None."""
    lines = ["  param %w: f32[8]"]
    if square == "x·x":
        lines.append(f"  %sq = mul(%x, %x) : {X}")
    else:
        lines += [
            '  %two = constant() {dtype="f32", shape=[], value=2.0} : f32[]',
            f"  %sq = pow(%x, %two) : {X}",
        ]
    lines += [
        "  %ms = reduce_mean(%sq) {axes=[-1], keepdim=true} : f32[2,4,1]",
        '  %eps = constant() {dtype="f32", shape=[], value=1e-06} : f32[]',
        "  %ve = add(%ms, %eps) : f32[2,4,1]",
    ]
    if normalize == "rsqrt":
        lines += ["  %r = rsqrt(%ve) : f32[2,4,1]", f"  %y = mul(%x, %r) : {X}"]
    elif normalize == "reciprocal":
        lines += [
            "  %s = sqrt(%ve) : f32[2,4,1]",
            "  %r = reciprocal(%s) : f32[2,4,1]",
            f"  %y = mul(%x, %r) : {X}",
        ]
    else:
        lines += ["  %s = sqrt(%ve) : f32[2,4,1]", f"  %y = div(%x, %s) : {X}"]
    out = "%y"
    if scale is not None:
        operands = "%w, %y" if scale == "w·y" else "%y, %w"
        lines.append(f"  %z = mul({operands}) : {X}")
        out = "%z"
    body = "\n".join(lines)
    return f"graph @g(%x: {X}) {{\n{body}\n  return {out}\n}}\n"


@pytest.mark.parametrize("square", ["x·x", "x**2"])
@pytest.mark.parametrize("normalize", ["rsqrt", "reciprocal", "div"])
@pytest.mark.parametrize("scale", ["w·y", "y·w"])
def test_every_form_fuses(rewrite_text, same_numerics, square, normalize, scale) -> None:
    text = rms(square, normalize, scale)
    assert rewrite_text(text, "fuse-rms-norm,canonicalize") == (
        f"graph @g(%x: {X}) {{\n  param %w: f32[8]\n"
        f"  %z = rms_norm(%x, %w) {{eps=1e-06}} : {X}\n  return %z\n}}\n"
    )
    same_numerics(parse(text), "fuse-rms-norm")


def test_without_a_scale(rewrite_text) -> None:
    fused = rewrite_text(rms("x**2", "rsqrt", None), "fuse-rms-norm,canonicalize")
    assert (
        fused == f"graph @g(%x: {X}) {{\n  %y = rms_norm(%x) {{eps=1e-06}} : {X}\n  return %y\n}}\n"
    )


def test_the_registry_decomposition_fuses(decomposed, run_pipeline, same_numerics) -> None:
    g = decomposed("rms_norm", {"x": X}, {"w": "f32[8]"}, eps=1e-5)
    same_numerics(g, "fuse-rms-norm,canonicalize")
    assert [(n.op, n.attrs) for n in g.nodes] == [("rms_norm", {"eps": 1e-5})]


def test_a_layer_norm_stays_a_layer_norm(decomposed, run_pipeline) -> None:
    """x - mean(x) normalised by its RMS is a layer norm; the default order fuses it so."""
    g = decomposed("layer_norm", {"x": X}, {"w": "f32[8]", "b": "f32[8]"}, eps=1e-5)
    run_pipeline(g, "fuse-layer-norm,fuse-rms-norm,canonicalize")
    assert [n.op for n in g.nodes] == ["layer_norm"]


def test_a_scale_that_is_not_a_vector_stays_a_mul(rewrite_text) -> None:
    text = rms("x·x", "rsqrt").replace("param %w: f32[8]", "param %w: f32[4,8]")
    fused = rewrite_text(text, "fuse-rms-norm,canonicalize")
    assert f"  %rms_norm = rms_norm(%x) {{eps=1e-06}} : {X}\n" in fused
    assert f"  %z = mul(%rms_norm, %w) : {X}\n" in fused
