"""fuse-qkv-attention: attention on the thirds of one projection becomes qkv_attention."""

import pytest

from cgc.ir import parse
from cgc.passes import DEFAULT_PIPELINE, explain, get_pass
from cgc.passes.fuse_qkv_attention import qkv_attention

X = "f32[2,6,8]"
QKV = "f32[2,6,36]"
E = "f32[2,6,12]"


def packed(*, bias: bool = True, order: str = "qkv", mask: bool = False, used: bool = False):
    """A projection sliced into thirds feeding attention, as canonicalized graphs have it."""
    b = ", %b" if bias else ""
    bounds = {"q": (0, 12), "k": (12, 24), "v": (24, 36)}
    slices = "".join(
        f"  %{name} = slice(%qkv) {{axis=2, end={bounds[name][1]}, start={bounds[name][0]}, "
        f"step=1}} : {E}\n"
        for name in "qkv"
    )
    operands = ", ".join(f"%{name}" for name in order) + (", %m" if mask else "")
    outputs = "%y, %qkv" if used else "%y"
    return (
        f"graph @g(%x: {X}) {{\n"
        "  param %w: f32[36,8]\n"
        + ("  param %b: f32[36]\n" if bias else "")
        + ("  param %m: f32[6,6]\n" if mask else "")
        + f'  %qkv = linear(%x, %w{b}) : {QKV} #{{scope="h.0.attn.c_attn", source="m.py:3"}}\n'
        + slices
        + f"  %y = attention({operands}) {{causal=true, num_heads=3, scale=0.25}} : {E} "
        '#{scope="h.0.attn", source="m.py:9"}\n'
        f"  return {outputs}\n}}\n"
    )


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_projection_slices_and_attention_fuse(rewrite_text, same_numerics, bias) -> None:
    b = ", %b" if bias else ""
    assert rewrite_text(packed(bias=bias), "fuse-qkv-attention") == (
        f"graph @g(%x: {X}) {{\n"
        "  param %w: f32[36,8]\n"
        + ("  param %b: f32[36]\n" if bias else "")
        + f"  %y = qkv_attention(%x, %w{b}) {{causal=true, num_heads=3, scale=0.25}} : {E} "
        '#{scope="h.0.attn", source="m.py:9"}\n'
        "  return %y\n}\n"
    )
    same_numerics(parse(packed(bias=bias)), "fuse-qkv-attention")


NOT_FUSED = {
    "thirds out of order": (
        dict(order="kqv"),
        "at %k: expected the q third of the last axis (slice 0·e to 1·e)",
    ),
    "a mask operand": (dict(mask=True), "at %y: expected 3 operands, found 4"),
    "projection used elsewhere": (
        dict(used=True),
        "at %qkv: also used outside the match, by the graph outputs",
    ),
}


@pytest.mark.parametrize("variant", sorted(NOT_FUSED))
def test_what_does_not_fuse_says_why(run_pipeline, variant) -> None:
    kwargs, why = NOT_FUSED[variant]
    text = packed(**kwargs)
    g = parse(text)
    assert explain(qkv_attention, g.nodes[-1], g) == why
    assert str(run_pipeline(text, "fuse-qkv-attention")) == text


def test_not_in_the_default_pipeline() -> None:
    assert "fuse-qkv-attention" not in DEFAULT_PIPELINE
    assert get_pass("fuse-qkv-attention").description() == (
        "Fuse attention on the q, k, v thirds of one linear projection into `qkv_attention`."
    )
