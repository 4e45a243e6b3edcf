"""The wafer's attention backward: execution equal to the op's reference for multi-head,
grouped-query and multi-query attention; each key-value head held once; what it refuses."""

import math

import pytest
import torch

from cgc.backends.cerebras import UNIT_ROUNDOFF, WSE2, kernel_for, round_to
from cgc.errors import UnsupportedOpError
from cgc.ir import get_op


def _node(one_node, heads=4, kv_heads=4, d=4, t=6, batch=2, attrs="causal=true", mask=False):
    q, kv = f"f32[{batch},{t},{heads * d}]", f"f32[{batch},{t},{kv_heads * d}]"
    body = (
        f"%y, %dk, %dv = attention_grad(%d, %q, %k, %v, %o, %l{', %m' if mask else ''}) "
        f"{{{attrs}, num_heads={heads}, num_kv_heads={kv_heads}, scale=0.5}} : {q}, {kv}, {kv}"
    )
    inputs = f"%d: {q}, %q: {q}, %k: {kv}, %v: {kv}, %o: {q}, %l: f32[{batch},{heads},{t}]"
    if mask:
        inputs += f", %m: f32[{batch},1,1,{t}]"
    return one_node(body, inputs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (4, 8)])
@pytest.mark.parametrize("mask", [False, True])
def test_execution_equals_the_reference(one_node, rows, cols, kv_heads, precision, mask) -> None:
    """4 query heads on 4, 2 and 1 key-value heads, causal, with and without a padding mask
    (the second sequence left-padded: its first query sees no key); dk and dv of a shared
    head sum over its query-head group. Per gradient, max |error| ≤ 1e-5·max|ref| in fp32 and
    32u·max|ref| in bf16 (the tolerance `cgc check --train` holds the wafer's gradients to)."""
    node = _node(one_node, kv_heads=kv_heads, mask=mask)
    g = torch.Generator().manual_seed(0)
    shapes = [v.type.shape for v in node.inputs]
    dy, q, k, v = (round_to(torch.randn(*s, generator=g), precision) for s in shapes[:4])
    extra = []
    if mask:
        extra = [torch.zeros(2, 1, 1, 6)]
        extra[0][1, ..., :2] = -math.inf
    y, lse = get_op("attention_lse").impl(q, k, v, *extra, **node.attrs)
    args = [dy, q, k, v, round_to(y, precision), lse, *extra]
    ref = get_op("attention_grad").impl(*(a.double() for a in args), **node.attrs)
    kernel = kernel_for(node, WSE2, precision)
    inputs = [a for i, a in enumerate(args) if i not in kernel.weight_slots]
    weights = [args[i] for i in kernel.weight_slots]
    out = kernel.execute(inputs, weights, rows, cols)
    tol = 1e-5 if precision == "fp32" else 32 * UNIT_ROUNDOFF[precision]
    for o, r in zip(out, ref, strict=True):
        assert o.isfinite().all()
        assert (o.double() - r).abs().max() <= tol * r.abs().max()


def test_each_key_value_head_is_held_once_for_its_query_heads(one_node) -> None:
    mha, gqa, mqa = (
        kernel_for(_node(one_node, kv_heads=n, d=8, t=16, batch=1), WSE2, "fp32") for n in (4, 2, 1)
    )
    # 4, 2 and 1 key-value heads of 16 keys x (8 + 8) dims x (4 B + their fp32 gradients)
    assert [k.resident_bytes() for k in (mha, gqa, mqa)] == [8192, 4096, 2048]
    # On one PE: MHA holds 4 pairs of 16 queries, GQA 2 pairs of 2 x 16, MQA 1 of 4 x 16.
    tilings = [k.tiling(1, 1) for k in (mha, gqa, mqa)]
    assert [(t["pairs_per_lane"], t["q_tile"], t["kv_heads"]) for t in tilings] == [
        (4, 16, 4),
        (2, 32, 2),
        (1, 64, 1),
    ]
    # K, V blocks and gradients 16 x 16 x (4 + 4) per pair; q, dy buffers 128, lse and D 16;
    # p, dp, ds rows 3·16·4 and dq 8·4
    assert [k.sram_bytes(1, 1) for k in (mha, gqa, mqa)] == [
        4 * 2048 + 144 + 224,
        2 * 2048 + 144 + 224,
        2048 + 144 + 224,
    ]
    # The same 64 queries meet the same keys: the same work. The keys and values enter once per
    # pair: east 4 x (16 x 18 + 256), 2 x (32 x 18 + 256), 64 x 18 + 256 words.
    costs = [k.cost(1, 1) for k in (mha, gqa, mqa)]
    assert costs[0].compute == costs[1].compute == costs[2].compute
    assert [c.fabric for c in costs] == [2176, 1664, 1408]


@pytest.mark.parametrize("attrs", ["window=2", "alibi_slopes=[0.5, 0.25]"])
def test_windows_and_alibi_are_refused_in_one_line(one_node, attrs) -> None:
    node = _node(one_node, heads=2, kv_heads=1, attrs=f"causal=true, {attrs}")
    with pytest.raises(
        UnsupportedOpError,
        match="attention backward handles no sliding window and no ALiBi bias$",
    ):
        kernel_for(node, WSE2, "fp32")
