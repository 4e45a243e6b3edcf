"""canonicalize: folding, dead code, CSE, no-op removal, view chains, operand order."""

import torch

from cgc.ir import parse


def body(lines: str, ret: str, args: str = "%x: f32[2,4]", params: str = "") -> str:
    return f"graph @g({args}) {{\n{params}{lines}  return {ret}\n}}\n"


def test_constant_expressions_fold_to_one_constant(rewrite_text) -> None:
    text = body(
        '  %a = constant() {dtype="f32", shape=[], value=2.0} : f32[]\n'
        '  %b = constant() {dtype="f32", shape=[], value=8.0} : f32[]\n'
        "  %s = sqrt(%b) : f32[]\n"
        "  %c = mul(%a, %s) : f32[]\n"
        "  %e = expand(%c) {shape=[2, 4]} : f32[2,4]\n"
        "  %y = add(%x, %e) : f32[2,4]\n",
        "%y",
    )
    assert rewrite_text(text, "canonicalize") == body(
        '  %e = constant() {dtype="f32", shape=[2, 4], value=5.656854152679443} : f32[2,4]\n'
        "  %y = add(%x, %e) : f32[2,4]\n",
        "%y",
    )


def test_known_parameters_fold_into_a_parameter_named_after_them(run_pipeline) -> None:
    g = parse(
        body(
            "  %m = slice(%mask) {axis=0, end=2, start=0} : bool[2,8]\n"
            "  %s = slice(%m) {axis=1, end=4, start=0} : bool[2,4]\n"
            "  %drop = logical_not(%s) : bool[2,4]\n"
            '  %inf = constant() {dtype="f32", shape=[], value=-inf} : f32[]\n'
            "  %y = where(%drop, %inf, %x) : f32[2,4]\n",
            "%y",
            params="  param %mask: bool[8,8]\n",
        )
    )
    g.weights["mask"] = torch.ones(8, 8, dtype=torch.bool).tril()
    run_pipeline(g, "canonicalize")
    assert str(g) == body(
        '  %inf = constant() {dtype="f32", shape=[], value=-inf} : f32[]\n'
        "  %y = where(%mask.slice.slice.logical_not, %inf, %x) : f32[2,4]\n",
        "%y",
        params="  param %mask.slice.slice.logical_not: bool[2,4]\n",
    )
    assert g.weights["mask.slice.slice.logical_not"].tolist() == [
        [False, True, True, True],
        [False, False, True, True],
    ]


def test_folding_stops_at_the_size_limit_and_at_meta_weights(run_pipeline) -> None:
    text = body(
        "  %n = neg(%w) : f32[2,4]\n  %y = add(%x, %n) : f32[2,4]\n",
        "%y",
        params="  param %w: f32[2,4]\n",
    )
    g = parse(text)
    g.weights["w"] = torch.arange(8.0).reshape(2, 4)
    assert str(run_pipeline(g, "canonicalize{fold-limit=4}")) == text
    g.weights["w"] = torch.empty(2, 4, device="meta")
    assert str(run_pipeline(g, "canonicalize")) == text
    g.weights["w"] = torch.arange(8.0).reshape(2, 4)
    run_pipeline(g, "canonicalize")
    assert g.op_counts() == {"add": 1}
    assert g.weights["w.neg"].tolist() == [[-0.0, -1.0, -2.0, -3.0], [-4.0, -5.0, -6.0, -7.0]]


def test_dead_nodes_and_unused_parameters_are_removed(rewrite_text) -> None:
    text = body(
        "  %unused = neg(%x) : f32[2,4]\n  %also = mul(%unused, %w) : f32[2,4]\n",
        "%x",
        params="  param %w: f32[2,4]\n",
    )
    assert rewrite_text(text, "canonicalize") == body("", "%x")


def test_common_subexpressions_merge(rewrite_text) -> None:
    text = body(
        "  %a = exp(%x) : f32[2,4]\n"
        "  %b = exp(%x) : f32[2,4]\n"
        "  %s1 = reduce_sum(%a) {axes=[1], keepdim=false} : f32[2]\n"
        "  %s2 = reduce_sum(%b) {axes=[1], keepdim=false} : f32[2]\n"
        "  %s3 = reduce_sum(%b) {axes=[0], keepdim=false} : f32[4]\n",
        "%s1, %s2, %s3",
    )
    assert rewrite_text(text, "canonicalize") == body(
        "  %a = exp(%x) : f32[2,4]\n"
        "  %s1 = reduce_sum(%a) {axes=[1], keepdim=false} : f32[2]\n"
        "  %s3 = reduce_sum(%a) {axes=[0], keepdim=false} : f32[4]\n",
        "%s1, %s1, %s3",
    )


def test_no_op_data_movement_disappears(rewrite_text) -> None:
    text = body(
        "  %r = reshape(%x) {shape=[2, 4]} : f32[2,4]\n"
        "  %t = transpose(%r) {perm=[0, 1]} : f32[2,4]\n"
        '  %c = cast(%t) {dtype="f32"} : f32[2,4]\n'
        "  %e = expand(%c) {shape=[2, 4]} : f32[2,4]\n"
        "  %s = slice(%e) {axis=1, end=4, start=0} : f32[2,4]\n"
        "  %y = neg(%s) : f32[2,4]\n",
        "%y",
    )
    assert rewrite_text(text, "canonicalize") == body("  %y = neg(%x) : f32[2,4]\n", "%y")


def test_view_chains_fold(rewrite_text) -> None:
    text = body(
        "  %r1 = reshape(%x) {shape=[8]} : f32[8]\n"
        "  %r2 = reshape(%r1) {shape=[4, 2]} : f32[4,2]\n"
        "  %t1 = transpose(%r2) {perm=[1, 0]} : f32[2,4]\n"
        "  %u = reshape(%t1) {shape=[1, 2, 2, 2]} : f32[1,2,2,2]\n"
        "  %t2 = transpose(%u) {perm=[0, 2, 1, 3]} : f32[1,2,2,2]\n"
        "  %t3 = transpose(%t2) {perm=[0, 1, 3, 2]} : f32[1,2,2,2]\n",
        "%r1, %t3",
    )
    assert rewrite_text(text, "canonicalize") == body(
        "  %r1 = reshape(%x) {shape=[8]} : f32[8]\n"
        "  %reshape = reshape(%x) {shape=[4, 2]} : f32[4,2]\n"
        "  %t1 = transpose(%reshape) {perm=[1, 0]} : f32[2,4]\n"
        "  %u = reshape(%t1) {shape=[1, 2, 2, 2]} : f32[1,2,2,2]\n"
        "  %t3 = transpose(%u) {perm=[0, 2, 3, 1]} : f32[1,2,2,2]\n",
        "%r1, %t3",
    )


def test_concat_drops_operands_with_no_elements(rewrite_text) -> None:
    text = body(
        "  %rot = neg(%x) : f32[2,4]\n"
        "  %pass = slice(%x) {axis=1, end=4, start=4, step=1} : f32[2,0]\n"
        "  %y = concat(%rot, %pass) {axis=-1} : f32[2,4]\n"
        "  %z = concat(%pass, %x, %pass, %rot) {axis=1} : f32[2,8]\n",
        "%y, %z",
    )
    assert rewrite_text(text, "canonicalize") == body(
        "  %y = neg(%x) : f32[2,4]\n  %z = concat(%x, %y) {axis=1} : f32[2,8]\n", "%y, %z"
    )


def test_a_matrix_expanded_over_a_matmuls_batch_is_broadcast(rewrite_text) -> None:
    """nn.MultiheadAttention's in-projection traces as bmm with the weight expanded per token."""
    text = body(
        "  %e = expand(%w) {shape=[3, 4, 6]} : f32[3,4,6]\n"
        "  %y = matmul(%x, %e) : f32[3,2,6]\n"
        "  %f = expand(%w) {shape=[2, 3, 4, 6]} : f32[2,3,4,6]\n"
        "  %z = matmul(%x, %f) : f32[2,3,2,6]\n",
        "%y, %z",
        "%x: f32[3,2,4]",
        "  param %w: f32[4,6]\n",
    )
    assert rewrite_text(text, "canonicalize") == body(
        "  %y = matmul(%x, %w) : f32[3,2,6]\n"
        "  %f = expand(%w) {shape=[2, 3, 4, 6]} : f32[2,3,4,6]\n"
        "  %z = matmul(%x, %f) : f32[2,3,2,6]\n",
        "%y, %z",
        "%x: f32[3,2,4]",
        "  param %w: f32[4,6]\n",
    )


def test_multiplying_by_one_and_adding_zero_disappear_when_types_stay(rewrite_text) -> None:
    text = body(
        '  %one = constant() {dtype="f32", shape=[], value=1.0} : f32[]\n'
        '  %zero = constant() {dtype="f32", shape=[], value=0.0} : f32[]\n'
        "  %a = mul(%one, %x) : f32[2,4]\n"
        "  %b = div(%a, %one) : f32[2,4]\n"
        "  %c = add(%zero, %b) : f32[2,4]\n"
        "  %d = sub(%c, %zero) : f32[2,4]\n"
        '  %ones = constant() {dtype="f32", shape=[3, 2, 4], value=1.0} : f32[3,2,4]\n'
        "  %wide = mul(%d, %ones) : f32[3,2,4]\n",
        "%wide",
    )
    assert rewrite_text(text, "canonicalize") == body(
        '  %ones = constant() {dtype="f32", shape=[3, 2, 4], value=1.0} : f32[3,2,4]\n'
        "  %wide = mul(%x, %ones) : f32[3,2,4]\n",
        "%wide",
    )


def test_commutative_operands_put_constants_then_parameters_second(rewrite_text) -> None:
    text = body(
        '  %c = constant() {dtype="f32", shape=[], value=3.0} : f32[]\n'
        "  %a = mul(%c, %x) : f32[2,4]\n"
        "  %b = add(%w, %a) : f32[2,4]\n"
        "  %m = maximum(%c, %w) : f32[2,4]\n"
        "  %d = sub(%m, %b) : f32[2,4]\n",
        "%d",
        params="  param %w: f32[2,4]\n",
    )
    assert rewrite_text(text, "canonicalize") == body(
        '  %c = constant() {dtype="f32", shape=[], value=3.0} : f32[]\n'
        "  %a = mul(%x, %c) : f32[2,4]\n"
        "  %b = add(%a, %w) : f32[2,4]\n"
        "  %m = maximum(%w, %c) : f32[2,4]\n"
        "  %d = sub(%m, %b) : f32[2,4]\n",
        "%d",
        params="  param %w: f32[2,4]\n",
    )


def test_flattened_batched_matmul_becomes_a_matmul(rewrite_text) -> None:
    text = body(
        "  %fa = reshape(%a) {shape=[6, 4, 8]} : f32[6,4,8]\n"
        "  %fb = reshape(%b) {shape=[6, 8, 5]} : f32[6,8,5]\n"
        "  %mm = matmul(%fa, %fb) : f32[6,4,5]\n"
        "  %y = reshape(%mm) {shape=[2, 3, 4, 5]} : f32[2,3,4,5]\n",
        "%y",
        args="%a: f32[2,3,4,8], %b: f32[2,3,8,5]",
    )
    assert rewrite_text(text, "canonicalize") == body(
        "  %y = matmul(%a, %b) : f32[2,3,4,5]\n",
        "%y",
        args="%a: f32[2,3,4,8], %b: f32[2,3,8,5]",
    )


LINEAR_T = body(
    "  %t = transpose(%w) {perm=[1, 0]} : f32[3,4]\n  %y = linear(%x, %t) : f32[2,3]\n",
    "%y",
    args="%x: f32[2,4]",
    params="  param %w: f32[4,3]\n",
)


def test_a_weight_transposed_for_linear_is_stored_transposed(run_pipeline) -> None:
    g = parse(LINEAR_T)
    w = torch.randn(4, 3)
    g.weights["w"] = w
    run_pipeline(g, "canonicalize{fold-limit=1}")
    assert str(g) == body(
        "  %y = linear(%x, %w.transpose) : f32[2,3]\n",
        "%y",
        args="%x: f32[2,4]",
        params="  param %w.transpose: f32[3,4]\n",
    )
    assert torch.equal(g.weights["w.transpose"], w.T)

    meta = parse(LINEAR_T)
    meta.weights["w"] = torch.empty(4, 3, device="meta")
    run_pipeline(meta, "canonicalize")
    assert meta.weights["w.transpose"].is_meta and meta.weights["w.transpose"].shape == (3, 4)

    assert str(run_pipeline(LINEAR_T, "canonicalize")) == LINEAR_T  # no data: kept


def test_canonicalize_keeps_numerics(same_numerics, decomposed) -> None:
    g = decomposed(
        "attention",
        {"q": "f32[2,6,8]", "k": "f32[2,6,8]", "v": "f32[2,6,8]"},
        num_heads=2,
        causal=True,
        scale=0.5,
    )
    same_numerics(g, "canonicalize")
    assert g.op_counts()["where"] == 1


def test_transpose_on_a_flattened_batch_becomes_one_transpose(rewrite_text) -> None:
    text = body(
        "  %f = reshape(%k) {shape=[6, 4, 8]} : f32[6,4,8]\n"
        "  %t = transpose(%f) {perm=[0, 2, 1]} : f32[6,8,4]\n"
        "  %y = reshape(%t) {shape=[2, 3, 8, 4]} : f32[2,3,8,4]\n",
        "%y",
        args="%k: f32[2,3,4,8]",
    )
    assert rewrite_text(text, "canonicalize") == body(
        "  %y = transpose(%k) {perm=[0, 1, 3, 2]} : f32[2,3,8,4]\n",
        "%y",
        args="%k: f32[2,3,4,8]",
    )


def test_transpose_moving_the_flattened_batch_stays(rewrite_text) -> None:
    text = body(
        "  %f = reshape(%k) {shape=[6, 4, 8]} : f32[6,4,8]\n"
        "  %t = transpose(%f) {perm=[1, 0, 2]} : f32[4,6,8]\n"
        "  %y = reshape(%t) {shape=[4, 2, 3, 8]} : f32[4,2,3,8]\n",
        "%y",
        args="%k: f32[2,3,4,8]",
    )
    assert rewrite_text(text, "canonicalize") == text


def test_bmm_attention_scores_lose_their_flattened_batch(rewrite_text, same_numerics) -> None:
    """BLOOM: baddbmm(alibi, q, kᵀ) on [b·h, t, d] views, then viewed back to [b, h, t, s]."""
    text = body(
        "  %fq = reshape(%q) {shape=[6, 4, 8]} : f32[6,4,8]\n"
        "  %fk = reshape(%k) {shape=[6, 4, 8]} : f32[6,4,8]\n"
        "  %kt = transpose(%fk) {perm=[0, 2, 1]} : f32[6,8,4]\n"
        "  %s = matmul(%fq, %kt) : f32[6,4,4]\n"
        '  %c = constant() {dtype="f32", shape=[], value=0.5} : f32[]\n'
        "  %sc = mul(%s, %c) : f32[6,4,4]\n"
        "  %fa = reshape(%a) {shape=[6, 1, 4]} : f32[6,1,4]\n"
        "  %sa = add(%fa, %sc) : f32[6,4,4]\n"
        "  %y = reshape(%sa) {shape=[2, 3, 4, 4]} : f32[2,3,4,4]\n",
        "%y",
        args="%q: f32[2,3,4,8], %k: f32[2,3,4,8], %a: f32[2,3,4]",
    )
    assert rewrite_text(text, "canonicalize") == body(
        "  %transpose = transpose(%k) {perm=[0, 1, 3, 2]} : f32[2,3,8,4]\n"
        "  %matmul = matmul(%q, %transpose) : f32[2,3,4,4]\n"
        '  %c = constant() {dtype="f32", shape=[], value=0.5} : f32[]\n'
        "  %mul = mul(%matmul, %c) : f32[2,3,4,4]\n"
        "  %reshape = reshape(%a) {shape=[2, 3, 1, 4]} : f32[2,3,1,4]\n"
        "  %y = add(%reshape, %mul) : f32[2,3,4,4]\n",
        "%y",
        args="%q: f32[2,3,4,8], %k: f32[2,3,4,8], %a: f32[2,3,4]",
    )
    same_numerics(parse(text), "canonicalize")


def test_a_unit_axis_merged_into_the_batch_is_no_flattened_batch(rewrite_text) -> None:
    """GQA's repeat views [b, n, 1, s, d] as [b, n, s, d]: nothing to move."""
    text = body(
        "  %e = expand(%k) {shape=[2, 1, 3, 4, 8]} : f32[2,1,3,4,8]\n"
        "  %r = reshape(%e) {shape=[2, 3, 4, 8]} : f32[2,3,4,8]\n"
        "  %y = transpose(%r) {perm=[0, 1, 3, 2]} : f32[2,3,8,4]\n",
        "%y",
        args="%k: f32[2,1,1,4,8]",
    )
    assert rewrite_text(text, "canonicalize") == text


def test_slices_of_a_weight_become_weights(run_pipeline) -> None:
    """nn.MultiheadAttention's cross-attention splits its packed in_proj weight."""
    text = body(
        "  %wq = slice(%w) {axis=0, end=4, start=0, step=1} : f32[4,3]\n"
        "  %wkv = slice(%w) {axis=0, end=12, start=4, step=1} : f32[8,3]\n"
        "  %q = linear(%x, %wq) : f32[2,4]\n"
        "  %kv = linear(%x, %wkv) : f32[2,8]\n",
        "%q, %kv",
        args="%x: f32[2,3]",
        params="  param %w: f32[12,3]\n",
    )
    g = parse(text)
    w = torch.randn(12, 3)
    g.weights["w"] = w
    run_pipeline(g, "canonicalize")
    assert str(g) == body(
        "  %q = linear(%x, %w.slice) : f32[2,4]\n  %kv = linear(%x, %w.slice_1) : f32[2,8]\n",
        "%q, %kv",
        args="%x: f32[2,3]",
        params="  param %w.slice: f32[4,3]\n  param %w.slice_1: f32[8,3]\n",
    )
    assert torch.equal(g.weights["w.slice"], w[:4]) and torch.equal(g.weights["w.slice_1"], w[4:])
