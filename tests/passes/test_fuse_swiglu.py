"""fuse-swiglu: silu(x·w_gateᵀ) · (x·w_upᵀ) over two linears of one x becomes one swiglu op."""

import pytest

from cgc.ir import parse

PARAMS = "  param %wg: f32[6,8]\n  param %wu: f32[6,8]\n"


def gated(silu: str, views: bool, bias: bool = False) -> str:
    """The gated MLP input as Llama writes it after fuse-linear; `silu` is "silu" or
    "sigmoid" (x·sigmoid(x), as torch's decomposition gives), `views` flattens x first."""
    lines = [PARAMS.rstrip("\n")]
    if bias:
        lines.append("  param %bg: f32[6]")
    x, shape = ("%flat", "f32[8,6]") if views else ("%x", "f32[2,4,6]")
    if views:
        lines.append("  %flat = reshape(%x) {shape=[8, 8]} : f32[8,8]")
    gate_operands = f"{x}, %wg" + (", %bg" if bias else "")
    lines += [
        f"  %g = linear({gate_operands}) : {shape}",
        f"  %u = linear({x}, %wu) : {shape}",
    ]
    g, u = "%g", "%u"
    if views:
        lines += [
            "  %gv = reshape(%g) {shape=[2, 4, 6]} : f32[2,4,6]",
            "  %uv = reshape(%u) {shape=[2, 4, 6]} : f32[2,4,6]",
        ]
        g, u = "%gv", "%uv"
    if silu == "silu":
        lines.append(f"  %a = silu({g}) : f32[2,4,6]")
    else:
        lines += [f"  %s = sigmoid({g}) : f32[2,4,6]", f"  %a = mul({g}, %s) : f32[2,4,6]"]
    lines.append(f"  %y = mul(%a, {u}) : f32[2,4,6]")
    body = "\n".join(lines)
    return f"graph @mlp(%x: f32[2,4,8]) {{\n{body}\n  return %y\n}}\n"


@pytest.mark.parametrize("silu", ["silu", "sigmoid"])
def test_gated_mlp_fuses(rewrite_text, same_numerics, silu) -> None:
    text = gated(silu, views=False)
    assert rewrite_text(text, "fuse-swiglu,canonicalize") == (
        f"graph @mlp(%x: f32[2,4,8]) {{\n{PARAMS}"
        "  %y = swiglu(%x, %wg, %wu) : f32[2,4,6]\n  return %y\n}\n"
    )
    same_numerics(parse(text), "fuse-swiglu")


def test_flattened_products_fuse_and_are_viewed_back(rewrite_text, same_numerics) -> None:
    text = gated("sigmoid", views=True)
    assert rewrite_text(text, "fuse-swiglu,canonicalize") == (
        f"graph @mlp(%x: f32[2,4,8]) {{\n{PARAMS}"
        "  %flat = reshape(%x) {shape=[8, 8]} : f32[8,8]\n"
        "  %swiglu = swiglu(%flat, %wg, %wu) : f32[8,6]\n"
        "  %y = reshape(%swiglu) {shape=[2, 4, 6]} : f32[2,4,6]\n  return %y\n}\n"
    )
    same_numerics(parse(text), "fuse-swiglu")


def test_a_projection_with_a_bias_stays(rewrite_text) -> None:
    text = gated("silu", views=False, bias=True)
    assert rewrite_text(text, "fuse-swiglu") == text


def test_the_registry_decomposition_fuses(decomposed, run_pipeline, same_numerics) -> None:
    g = decomposed("swiglu", {"x": "f32[2,4,8]"}, {"wg": "f32[6,8]", "wu": "f32[6,8]"})
    same_numerics(g, "fuse-linear,fuse-swiglu,canonicalize")
    assert [n.op for n in g.nodes] == ["swiglu"]
