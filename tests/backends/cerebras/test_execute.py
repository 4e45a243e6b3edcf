"""Tile-level execution: fp32 agrees with the IR reference to 1e-5; 16-bit modes stay within
first-order error bounds in the unit roundoff u of the format (stated per kernel below)."""

import math

import pytest
import torch

from cgc.backends.cerebras import UNIT_ROUNDOFF, WSE2, kernel_for, round_to
from cgc.backends.cerebras.tiles import chain_sum, row_sum
from cgc.errors import InputError
from cgc.ir import get_op, interpret

U32 = 2.0**-24
PRECISIONS = ("fp32", "fp16", "bf16", "cb16")
RECTS = ((1, 1), (2, 3), (4, 4), (3, 16), (8, 40))


def run(node, args, rows, cols, precision):
    """Execute `node`'s kernel with node-ordered `args` (split into inputs and weights)."""
    kernel = kernel_for(node, WSE2, precision)
    inputs = [a for i, a in enumerate(args) if i not in kernel.weight_slots]
    weights = [args[i] for i in kernel.weight_slots]
    (out,) = kernel.execute(inputs, weights, rows, cols)
    return out


def reference(node, args):
    return get_op(node.op).impl(
        *(a.double() if a.is_floating_point() else a for a in args), **node.attrs
    )


def assert_fp32_close(out, ref) -> None:
    """fp32: max |ŷ - y| ≤ 1e-5 · max |y|."""
    assert (out.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


LINEAR = (
    "%y = linear(%x, %w, %b) : f32[2,8,96]",
    "%x: f32[2,8,80]",
    "  param %w: f32[96,80]\n  param %b: f32[96]\n",
)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", RECTS)
def test_linear(one_node, precision, rect) -> None:
    """Bound: u|ŷ| + (2u + u²)·S + u|b| + (K + 1)·2⁻²⁴·(1 + u)²·(S + |b|), S = |x|·|w|ᵀ:
    operands rounded (u each, products exact in fp32), fp32 sums, output rounded (u)."""
    node = one_node(*LINEAR)
    x, w, b = randn(2, 8, 80, seed=1), randn(96, 80, seed=2, scale=0.1), randn(96, seed=3)
    out = run(node, [x, w, b], *rect, precision)
    ref = reference(node, [x, w, b])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    s = x.double().abs() @ w.double().abs().T
    bound = (
        u * out.double().abs()
        + (2 * u + u * u) * s
        + u * b.double().abs()
        + 81 * U32 * (1 + u) ** 2 * (s + b.double().abs())
    )
    assert ((out.double() - ref).abs() <= bound * 1.0001).all()
    assert torch.equal(out, round_to(out, precision))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", RECTS)
def test_summa_matmul(one_node, precision, rect) -> None:
    """Same bound as linear, without a bias."""
    node = one_node("%y = matmul(%a, %b) : f32[3,24,20]", "%a: f32[3,24,36], %b: f32[36,20]")
    a, b = randn(3, 24, 36, seed=4), randn(36, 20, seed=5)
    out = run(node, [a, b], *rect, precision)
    ref = reference(node, [a, b])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    s = a.double().abs() @ b.double().abs()
    bound = u * out.double().abs() + (2 * u + u * u) * s + 37 * U32 * (1 + u) ** 2 * s
    assert ((out.double() - ref).abs() <= bound * 1.0001).all()


def test_k_blocks_are_summed_west_to_east_in_fp32(one_node) -> None:
    node = one_node("%y = linear(%x, %w) : f32[1,1]", "%x: f32[1,3]", "  param %w: f32[1,3]\n")
    assert kernel_for(node, WSE2, "fp32").tiling(1, 3)["chain"] == 3
    x = torch.ones(1, 3)
    # 1 + 1e8 rounds to 1e8 in fp32, so the chain loses the 1; the other order keeps it
    assert run(node, [x, torch.tensor([[1.0, 1e8, -1e8]])], 1, 3, "fp32").item() == 0.0
    assert run(node, [x, torch.tensor([[1e8, -1e8, 1.0]])], 1, 3, "fp32").item() == 1.0


def test_chains_add_in_order() -> None:
    parts = [torch.tensor([1.0]), torch.tensor([1e8]), torch.tensor([-1e8])]
    assert chain_sum(parts).item() == 0.0
    assert chain_sum(reversed(parts)).item() == 1.0
    x = torch.tensor([[1.0, 1e8, -1e8, 1.0]])
    assert row_sum(x, 1).item() == 1.0  # ((1 + 1e8) - 1e8) + 1: the 1 is lost, then added
    assert row_sum(x, 2).item() == 0.0  # (1 + 1e8) + (-1e8 + 1): both 1s are lost


ATTENTION = {
    "causal": (
        "%y = attention(%q, %k, %v) {causal=true, num_heads=4, scale=0.25} : f32[2,12,64]",
        "%q: f32[2,12,64], %k: f32[2,12,64], %v: f32[2,12,64]",
        "",
    ),
    "masked": (
        "%y = attention(%q, %k, %v, %m) {causal=false, num_heads=2, scale=0.2} : f32[1,10,32]",
        "%q: f32[1,10,32], %k: f32[1,14,32], %v: f32[1,14,32]",
        "  param %m: f32[10,14]\n",
    ),
    "longer_keys": (
        "%y = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.2} : f32[1,6,16]",
        "%q: f32[1,6,16], %k: f32[1,9,16], %v: f32[1,9,16]",
        "",
    ),
    # 4 query heads on 2 key-value heads, and a padding mask
    "grouped": (
        "%y = attention(%q, %k, %v, %m) {causal=true, num_heads=4, num_kv_heads=2, scale=0.25}"
        " : f32[2,12,64]",
        "%q: f32[2,12,64], %k: f32[2,12,32], %v: f32[2,12,32]",
        "  param %m: f32[2,1,1,12]\n",
    ),
    "multi_query": (
        "%y = attention(%q, %k, %v) {causal=true, num_heads=4, num_kv_heads=1, scale=0.25}"
        " : f32[1,12,64]",
        "%q: f32[1,12,64], %k: f32[1,12,16], %v: f32[1,12,16]",
        "",
    ),
    # a window of 5 keys: the ring's slots hold keys of several ages
    "sliding_window": (
        "%y = attention(%q, %k, %v) {causal=true, num_heads=4, num_kv_heads=2, scale=0.25,"
        " window=5} : f32[2,12,64]",
        "%q: f32[2,12,64], %k: f32[2,12,32], %v: f32[2,12,32]",
        "",
    ),
    "alibi": (
        "%y = attention(%q, %k, %v) {alibi_slopes=[0.25, 0.0625], causal=true, num_heads=2,"
        " scale=0.2} : f32[1,10,32]",
        "%q: f32[1,10,32], %k: f32[1,10,32], %v: f32[1,10,32]",
        "",
    ),
    # decoder queries on the encoder's keys: longer queries, no causal mask
    "cross": (
        "%y = attention(%q, %k, %v) {num_heads=2, scale=0.2} : f32[2,11,32]",
        "%q: f32[2,11,32], %k: f32[2,7,32], %v: f32[2,7,32]",
        "",
    ),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", RECTS)
@pytest.mark.parametrize("case", sorted(ATTENTION))
def test_attention(one_node, precision, rect, case) -> None:
    """Bound (normwise): u·max|y| + ((4u + 2d·2⁻²⁴)·scale·Q + 3u + S·2⁻²⁴)·max|v|, x 1.5 for
    second-order terms; Q = max over query-key pairs of Σ|q||k|. Rounding q, k moves a score
    by ≤ 2u·scale·Q (plus fp32 dot error), softmax turns a score change δ into Σ|Δp| ≤ 2δ,
    p and v are rounded (u each), l uses unrounded p (u), the output is rounded (u)."""
    node = one_node(*ATTENTION[case])
    args = [randn(*v.shape, seed=i) for i, v in enumerate(node.inputs)]
    if case == "masked":
        args[3] = torch.where(randn(10, 14, seed=9) > 1.0, -1e4, 0.0)
    if case == "grouped":
        args[3] = torch.zeros(2, 1, 1, 12)
        args[3][1, ..., :4] = -math.inf  # the second sequence is left-padded
    out = run(node, args, *rect, precision)
    ref = reference(node, args)
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u, h, kh = UNIT_ROUNDOFF[precision], node.attrs["num_heads"], node.attrs["num_kv_heads"]
    q = args[0].double().abs().reshape(*args[0].shape[:2], h, -1)
    k, v = (
        a.double().abs().reshape(*a.shape[:2], kh, -1).repeat_interleave(h // kh, 2)
        for a in args[1:3]
    )
    d, s = q.shape[-1], k.shape[1]
    qk = torch.einsum("bthd,bshd->bhts", q, k).max().item()
    scale = node.attrs["scale"]
    bound = u * ref.abs().max() + ((4 * u + 2 * d * U32) * scale * qk + 3 * u + s * U32) * v.max()
    assert (out.double() - ref).abs().max() <= 1.5 * bound


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", RECTS)
def test_attention_zeroes_a_query_with_every_key_masked(one_node, precision, rect) -> None:
    """As the IR op (and torch SDPA): a left-padded query that sees no key outputs zeros, not
    NaN, whichever chain blocks its keys fall into."""
    node = one_node(*ATTENTION["masked"])
    args = [randn(*v.shape, seed=i) for i, v in enumerate(node.inputs)]
    args[3] = torch.zeros(10, 14).masked_fill(
        torch.ones(10, 14, dtype=torch.bool).triu(5), -math.inf
    )
    args[3][:3] = -math.inf  # queries 0-2 are padding
    out = run(node, args, *rect, precision)
    assert torch.equal(out[0, :3], torch.zeros(3, 32))
    assert out.isfinite().all()
    if precision == "fp32":
        assert_fp32_close(out, reference(node, args))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", RECTS)
def test_layer_norm(one_node, precision, rect) -> None:
    """Bound (first order, x 1.5): with z = (x - μ)/σ, rounding x by u moves z by
    u·(|x| + mean|x| + |z|·mean(|z||x|))/σ; w, b and the output are rounded (u each); fp32
    statistics add (D + 10)·2⁻²⁴·(|z| + 1)·|w|."""
    node = one_node(
        "%y = layer_norm(%x, %w, %b) {eps=1e-05} : f32[3,5,70]",
        "%x: f32[3,5,70]",
        "  param %w: f32[70]\n  param %b: f32[70]\n",
    )
    x, w, b = randn(3, 5, 70, seed=1) + 0.5, randn(70, seed=2), randn(70, seed=3)
    out = run(node, [x, w, b], *rect, precision)
    ref = reference(node, [x, w, b])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    xd, wd, bd = x.double(), w.double().abs(), b.double().abs()
    sigma = xd.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
    z = ((xd - xd.mean(-1, keepdim=True)) / sigma).abs()
    dz = (
        u
        * (xd.abs() + xd.abs().mean(-1, keepdim=True) + z * (z * xd.abs()).mean(-1, keepdim=True))
        / sigma
    )
    bound = dz * wd + u * z * wd + u * bd + u * out.double().abs() + 80 * U32 * (z + 1) * wd
    assert ((out.double() - ref).abs() <= 1.5 * bound).all()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(one_node, precision, approximate) -> None:
    """Bound: 1.07·u·|x| (GELU's slope is at most 1.07) + u|ŷ| + 8·2⁻²⁴·(|x| + |y|)."""
    node = one_node(
        f'%y = gelu(%x) {{approximate="{approximate}"}} : f32[4,9,50]', "%x: f32[4,9,50]"
    )
    x = randn(4, 9, 50, seed=7, scale=3.0)
    out = run(node, [x], 3, 7, precision)
    ref = reference(node, [x])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    bound = (
        1.07 * u * x.double().abs()
        + u * out.double().abs()
        + 8 * U32 * (x.double().abs() + ref.abs())
    )
    assert ((out.double() - ref).abs() <= bound).all()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_residual_add_and_bias(one_node, precision) -> None:
    """Bound: u·(|a| + |b|) + u|ŷ|."""
    for body, inputs, params in [
        ("%y = add(%a, %b) : f32[2,6,30]", "%a: f32[2,6,30], %b: f32[2,6,30]", ""),
        ("%y = add(%a, %b) : f32[2,6,30]", "%a: f32[2,6,30]", "  param %b: f32[30]\n"),
    ]:
        node = one_node(body, inputs, params)
        a, b = randn(2, 6, 30, seed=1), randn(*node.inputs[1].shape, seed=2)
        out = run(node, [a, b], 2, 5, precision)
        ref = reference(node, [a, b])
        u = UNIT_ROUNDOFF[precision]
        bound = u * (a.double().abs() + b.double().abs()) + u * out.double().abs() + 2 * U32
        assert ((out.double() - ref).abs() <= bound).all()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("softmax", "{axis=-1}"),
        ("log_softmax", "{axis=-1}"),
        ("reduce_sum", "{axes=[-1], keepdim=true}"),
        ("reduce_mean", "{axes=[2], keepdim=false}"),
        ("reduce_max", "{axes=[-1], keepdim=false}"),
        ("var", "{axes=[-1], correction=1, keepdim=false}"),
    ],
)
def test_row_reductions(one_node, precision, op, attrs) -> None:
    """fp32 to 1e-5; 16-bit normwise: (4u·max|x| + 2u)·max(1, max|y|) + Du·max|x|."""
    x = randn(3, 4, 33, seed=3)
    g_out = {"softmax": "[3,4,33]", "log_softmax": "[3,4,33]", "reduce_sum": "[3,4,1]"}
    shape = g_out.get(op, "[3,4]")
    node = one_node(f"%y = {op}(%x) {attrs} : f32{shape}", "%x: f32[3,4,33]")
    out = run(node, [x], 2, 6, precision)
    ref = reference(node, [x])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u, xm = UNIT_ROUNDOFF[precision], x.abs().max().item()
    bound = (4 * u * xm + 2 * u) * max(1.0, ref.abs().max().item()) + 33 * u * xm
    assert (out.double() - ref).abs().max().item() <= bound


@pytest.mark.parametrize("precision", PRECISIONS)
def test_embedding_is_the_rounded_table_row(one_node, precision) -> None:
    node = one_node(
        "%y = embedding(%t, %i) : f32[2,5,24]", "%i: i64[2,5]", "  param %t: f32[50,24]\n"
    )
    table, ids = randn(50, 24, seed=1), torch.randint(0, 50, (2, 5))
    out = run(node, [table, ids], 7, 3, precision)
    assert torch.equal(out, round_to(table[ids], precision))


def test_embedding_grad_adds_nothing_into_the_padding_row(one_node) -> None:
    node = one_node(
        "%y = embedding_grad(%i, %d) {num_rows=6, padding_idx=2} : f32[6,4]",
        "%i: i64[2,5], %d: f32[2,5,4]",
    )
    ids, dy = torch.tensor([[2, 0, 2, 5, 1], [3, 2, 0, 4, 2]]), randn(2, 5, 4)
    out = run(node, [ids, dy], 3, 2, "fp32")
    assert torch.equal(out[2], torch.zeros(4))
    assert_fp32_close(out, reference(node, [ids, dy]))


def test_free_ops_move_data_exactly(one_node) -> None:
    node = one_node(
        "%t = neg(%x) : f32[2,4,6]\n  %y = transpose(%t) {perm=[0,2,1]} : f32[2,6,4]",
        "%x: f32[2,4,6]",
    )
    x = randn(2, 4, 6)
    assert not kernel_for(node, WSE2, "cb16").free
    assert torch.equal(run(node, [x], 2, 2, "cb16"), x.transpose(1, 2))
    node = one_node(
        "%y = slice(%x) {axis=2, end=5, start=1, step=2} : f32[2,4,2]", "%x: f32[2,4,6]"
    )
    assert torch.equal(run(node, [x], 0, 0, "fp16"), x[..., 1:5:2])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fused_gpt_graph_through_the_kernels(fused_gpt, precision) -> None:
    """Logits of a 2-layer GPT, every node on its own rectangle: fp32 to 1e-5 of the
    interpreter; 16-bit modes to 4u normwise (measured: 1.2u fp16, 1.6u bf16, 1.7u cb16)."""
    g = fused_gpt()
    ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    (ref,) = interpret(g, ids)
    env = {id(g.inputs[0]): ids} | {id(v): g.weights[n] for n, v in g.params.items()}
    for i, node in enumerate(g.nodes):
        rows, cols = (0, 0) if node.op == "slice" else RECTS[i % len(RECTS)]
        out = run(node, [env[id(v)] for v in node.inputs], rows, cols, precision)
        env[id(node.output)] = out
    out = env[id(g.outputs[0])]
    tol = 1e-5 if precision == "fp32" else 4 * UNIT_ROUNDOFF[precision]
    assert (out - ref).abs().max() <= tol * ref.abs().max()
    assert not math.isnan(out.sum().item())


def test_execute_checks_the_program(one_node) -> None:
    k = kernel_for(one_node(*LINEAR), WSE2, "fp32")
    x, w, b = randn(2, 8, 80), randn(96, 80), randn(96)
    tiling = k.tiling(4, 4)
    assert k.execute([x], [w, b], 4, 4, tiling)[0].shape == (2, 8, 96)
    with pytest.raises(InputError, match=r"tiling does not match a 4x5 rectangle"):
        k.execute([x], [w, b], 4, 5, tiling)
    with pytest.raises(InputError, match="expected 1 inputs and 2 weights, got 2 and 1"):
        k.execute([x, w], [b], 4, 4)
    with pytest.raises(InputError, match=r"operand 1 should be f32\[96,80\], got shape \[80, 96\]"):
        k.execute([x], [w.T, b], 4, 4)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", RECTS)
def test_rms_norm(one_node, precision, rect) -> None:
    """Bound (first order, x 1.5): with z = x/r, rounding x by u moves z by at most 2u|z|
    (u in x, u in r); w and the output are rounded (u each); the fp32 statistic adds
    (D + 10)·2⁻²⁴·|z|·|w|."""
    node = one_node(
        "%y = rms_norm(%x, %w) {eps=1e-06} : f32[3,5,70]",
        "%x: f32[3,5,70]",
        "  param %w: f32[70]\n",
    )
    x, w = randn(3, 5, 70, seed=1), randn(70, seed=2)
    out = run(node, [x, w], *rect, precision)
    ref = reference(node, [x, w])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    xd, wd = x.double(), w.double().abs()
    z = (xd * torch.rsqrt(xd.square().mean(-1, keepdim=True) + 1e-6)).abs()
    bound = 3 * u * z * wd + u * out.double().abs() + 80 * U32 * z * wd
    assert ((out.double() - ref).abs() <= 1.5 * bound).all()


ROTARY = {
    # GPT-NeoX/Llama halves, a table shared by the batch
    "half": ("interleaved=false, num_heads=4, rotary_dim=16", "f32[9,8]"),
    # GPT-J pairs, partial rotary (8 of 16 features), per-sequence tables (position ids)
    "interleaved_partial": ("interleaved=true, num_heads=4, rotary_dim=8", "f32[2,9,4]"),
    "half_partial": ("interleaved=false, num_heads=4, rotary_dim=8", "f32[9,4]"),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", ((1, 1), (2, 3), (8, 40)))
@pytest.mark.parametrize("case", sorted(ROTARY))
def test_rotary_embedding(one_node, precision, rect, case) -> None:
    """Bound: (2u + u² + 3·2⁻²⁴)·(|a||cos| + |b||sin|) + u|ŷ|: a, b, cos and sin are rounded
    (u each, products of two), two fp32 products and a sum, the output rounded; features past
    rotary_dim only pass through (u)."""
    attrs, table = ROTARY[case]
    node = one_node(
        f"%y = rotary_embedding(%x, %c, %s) {{{attrs}}} : f32[2,9,64]",
        "%x: f32[2,9,64]",
        f"  param %c: {table}\n  param %s: {table}\n",
    )
    angles = randn(*node.inputs[1].shape, seed=3, scale=3.0)
    x, cos, sin = randn(2, 9, 64, seed=1), angles.cos(), angles.sin()
    out = run(node, [x, cos, sin], *rect, precision)
    ref = reference(node, [x, cos, sin])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    # |a||cos| + |b||sin| per output: rotating |x| by |cos| and ∓|sin| gives it on the first
    # and second feature of each pair respectively, and less on the other
    s = torch.maximum(*(reference(node, [x.abs(), cos.abs(), t]) for t in (sin.abs(), -sin.abs())))
    bound = (2 * u + u * u + 3 * U32) * s + u * out.double().abs()
    assert ((out.double() - ref).abs() <= bound * 1.0001).all()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rect", RECTS)
def test_swiglu(one_node, precision, rect) -> None:
    """Bound (x 1.5): each product errs by E = (2u + u²)·S + (K + 1)·2⁻²⁴·(1 + u)²·S as a
    linear's, S = |x|·|w|ᵀ; silu's slope is at most 1.1, so the output errs by
    1.1·E_gate·|up| + |silu(gate)|·E_up + E_gate·E_up, and is rounded (u)."""
    node = one_node(
        "%y = swiglu(%x, %g, %u) : f32[2,8,48]",
        "%x: f32[2,8,80]",
        "  param %g: f32[48,80]\n  param %u: f32[48,80]\n",
    )
    x = randn(2, 8, 80, seed=1)
    w_gate, w_up = randn(48, 80, seed=2, scale=0.2), randn(48, 80, seed=3, scale=0.2)
    out = run(node, [x, w_gate, w_up], *rect, precision)
    ref = reference(node, [x, w_gate, w_up])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    xd = x.double()
    gate, up = xd @ w_gate.double().T, xd @ w_up.double().T

    def err(w):
        s = xd.abs() @ w.double().abs().T
        return (2 * u + u * u) * s + 81 * U32 * (1 + u) ** 2 * s

    e_gate, e_up = err(w_gate), err(w_up)
    silu = gate * torch.sigmoid(gate)
    bound = 1.1 * e_gate * up.abs() + silu.abs() * e_up + e_gate * e_up + u * out.double().abs()
    assert ((out.double() - ref).abs() <= 1.5 * bound + 1e-30).all()


def test_cumsum_of_a_padding_mask_is_exact(one_node) -> None:
    """OPT's and BLOOM's positions: integers add exactly, on any rectangle."""
    node = one_node("%y = cumsum(%x) {axis=1} : i64[3,37]", "%x: i64[3,37]")
    mask = torch.ones(3, 37, dtype=torch.int64)
    mask[1, :5] = 0
    mask[2, :30] = 0
    for rect in RECTS:
        out = run(node, [mask], *rect, "cb16")
        assert out.dtype == torch.int64 and torch.equal(out, mask.cumsum(1))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cumsum_of_floats_carries_west_to_east(one_node, precision) -> None:
    """Bound: u·Σ|x| (operands rounded) + D·2⁻²⁴·Σ|x| (fp32 sums) + u|ŷ| (output rounded);
    the carry chain adds segments' totals in order west to east."""
    node = one_node("%y = cumsum(%x) {axis=-1} : f32[4,50]", "%x: f32[4,50]")
    x = randn(4, 50, seed=5)
    out = run(node, [x], 3, 7, precision)
    ref = reference(node, [x])
    if precision == "fp32":
        assert_fp32_close(out, ref)
    u = UNIT_ROUNDOFF[precision]
    running = x.double().abs().cumsum(-1)
    bound = u * running + 50 * U32 * running + u * out.double().abs()
    assert ((out.double() - ref).abs() <= bound).all()
    # the chain's order: 1e8 enters the carry first, so the 1s of later segments are lost
    node = one_node("%y = cumsum(%x) {axis=-1} : f32[1,3]", "%x: f32[1,3]")
    (y,) = run(node, [torch.tensor([[1e8, 1.0, -1e8]])], 1, 3, "fp32").tolist()
    assert y == [1e8, 1e8, 0.0]
