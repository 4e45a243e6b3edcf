"""fuse-linear: x·wᵀ + b, addmm's flattened form, and HF Conv1D's [in, out] weights."""

import pytest
import torch

from cgc.ir import parse

HEAD = "graph @g(%x: f32[2,4,8]) {\n  param %w: f32[6,8]\n  param %b: f32[6]\n"


@pytest.mark.parametrize("bias", [True, False])
def test_registry_decomposition_fuses(decomposed, rewrite_text, same_numerics, bias) -> None:
    params = {"w": "f32[6,8]", "b": "f32[6]"} if bias else {"w": "f32[6,8]"}
    g = decomposed("linear", {"x": "f32[2,4,8]"}, params)
    operands = "%x, %w, %b" if bias else "%x, %w"
    (out,) = (v.name for v in g.outputs)
    assert rewrite_text(str(g), "fuse-linear") == (
        "graph @g(%x: f32[2,4,8]) {\n"
        + "".join(f"  param %{n}: {t}\n" for n, t in params.items())
        + f"  %{out} = linear({operands}) : f32[2,4,6]\n  return %{out}\n}}\n"
    )
    same_numerics(g, "fuse-linear")


ADDMM = (
    HEAD + "  %flat = reshape(%x) {shape=[8, 8]} : f32[8,8]\n"
    "  %wt = transpose(%w) {perm=[1, 0]} : f32[8,6]\n"
    "  %mm = matmul(%flat, %wt) : f32[8,6]\n"
    "  %addmm = add(%b, %mm) : f32[8,6]\n"
    "  %y = reshape(%addmm) {shape=[2, 4, 6]} : f32[2,4,6]\n"
    "  return %y\n}\n"
)
FUSED = HEAD + "  %y = linear(%x, %w, %b) : f32[2,4,6]\n  return %y\n}\n"


def test_addmm_flatten_and_unflatten_are_absorbed(rewrite_text, same_numerics) -> None:
    assert rewrite_text(ADDMM, "fuse-linear") == FUSED
    same_numerics(parse(ADDMM), "fuse-linear")


CONV1D = (
    "graph @g(%x: f32[2,4,8]) {\n  param %w: f32[8,6]\n  param %b: f32[6]\n"
    "  %flat = reshape(%x) {shape=[8, 8]} : f32[8,8]\n"
    "  %mm = matmul(%flat, %w) : f32[8,6]\n"
    "  %addmm = add(%b, %mm) : f32[8,6]\n"
    "  %y = reshape(%addmm) {shape=[2, 4, 6]} : f32[2,4,6]\n"
    "  return %y\n}\n"
)


def test_in_out_weights_fuse_through_a_transpose(rewrite_text, run_pipeline, same_numerics) -> None:
    assert rewrite_text(CONV1D, "fuse-linear") == (
        "graph @g(%x: f32[2,4,8]) {\n  param %w: f32[8,6]\n  param %b: f32[6]\n"
        "  %transpose = transpose(%w) {perm=[1, 0]} : f32[6,8]\n"
        "  %y = linear(%x, %transpose, %b) : f32[2,4,6]\n"
        "  return %y\n}\n"
    )
    g = parse(CONV1D)
    w = torch.randn(8, 6)
    g.weights["w"] = w
    same_numerics(g, "fuse-linear,canonicalize")
    assert str(g) == (
        "graph @g(%x: f32[2,4,8]) {\n  param %b: f32[6]\n  param %w.transpose: f32[6,8]\n"
        "  %y = linear(%x, %w.transpose, %b) : f32[2,4,6]\n"
        "  return %y\n}\n"
    )
    assert torch.equal(g.weights["w.transpose"], w.T)
    assert rewrite_text(CONV1D, "fuse-linear{in-out-weights=false}") == CONV1D


def test_products_with_computed_values_stay_matmuls(rewrite_text) -> None:
    text = (
        "graph @g(%x: f32[2,4,8], %y: f32[6,8]) {\n"
        "  %e = exp(%y) : f32[6,8]\n"
        "  %t = transpose(%e) {perm=[1, 0]} : f32[8,6]\n"
        "  %mm = matmul(%x, %t) : f32[2,4,6]\n"
        "  return %mm\n}\n"
    )
    assert rewrite_text(text, "fuse-linear") == text


def test_a_broadcasting_bias_stays_an_add(rewrite_text) -> None:
    text = (
        "graph @g(%x: f32[4,8]) {\n  param %w: f32[6,8]\n  param %b: f32[3,4,6]\n"
        "  %wt = transpose(%w) {perm=[1, 0]} : f32[8,6]\n"
        "  %mm = matmul(%x, %wt) : f32[4,6]\n"
        "  %y = add(%mm, %b) : f32[3,4,6]\n"
        "  return %y\n}\n"
    )
    assert rewrite_text(text, "fuse-linear") == (
        "graph @g(%x: f32[4,8]) {\n  param %w: f32[6,8]\n  param %b: f32[3,4,6]\n"
        "  %linear = linear(%x, %w) : f32[4,6]\n"
        "  %y = add(%linear, %b) : f32[3,4,6]\n"
        "  return %y\n}\n"
    )
