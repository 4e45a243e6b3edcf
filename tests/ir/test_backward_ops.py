"""The fused backward ops (cgc/ir/ops/backward.py) and attention_lse: decompositions agree with
the reference implementations, and queries that see no key get zeros, not NaN."""

import pytest
import torch

from cgc.ir import get_op, interpret, parse, verify
from cgc.ir.graph import Graph


def _decompose_all(g: Graph) -> None:
    for node in [n for n in g.nodes if get_op(n.op).decompose is not None]:
        with g.inserting_before(node, node.meta):
            outs = get_op(node.op).decompose(g, node.inputs, node.attrs)
        for old, new in zip(node.outputs, outs, strict=True):
            g.replace_all_uses(old, new)
        g.erase_node(node)


ATTN = "{causal=true, num_heads=2, scale=0.3}"
CASES = {
    "attention_lse": (
        "%q: f32[2,5,6], %k: f32[2,5,6], %v: f32[2,5,4]",
        f"%y, %lse = attention_lse(%q, %k, %v) {ATTN} : f32[2,5,4], f32[2,2,5]",
    ),
    "attention_lse:mask": (
        "%q: f32[2,5,6], %k: f32[2,5,6], %v: f32[2,5,4], %m: f32[2,1,5,5]",
        f"%y, %lse = attention_lse(%q, %k, %v, %m) {ATTN} : f32[2,5,4], f32[2,2,5]",
    ),
    "attention_grad": (
        "%d: f32[2,5,4], %q: f32[2,5,6], %k: f32[2,5,6], %v: f32[2,5,4]",
        f"%o, %l = attention_lse(%q, %k, %v) {ATTN} : f32[2,5,4], f32[2,2,5]\n"
        f"%y, %y1, %y2 = attention_grad(%d, %q, %k, %v, %o, %l) {ATTN}"
        " : f32[2,5,6], f32[2,5,6], f32[2,5,4]",
    ),
    "attention_grad:mask": (
        "%d: f32[2,5,4], %q: f32[2,5,6], %k: f32[2,5,6], %v: f32[2,5,4], %m: f32[2,1,5,5]",
        f"%o, %l = attention_lse(%q, %k, %v, %m) {ATTN} : f32[2,5,4], f32[2,2,5]\n"
        f"%y, %y1, %y2 = attention_grad(%d, %q, %k, %v, %o, %l, %m) {ATTN}"
        " : f32[2,5,6], f32[2,5,6], f32[2,5,4]",
    ),
    "layer_norm_grad": (
        "%d: f32[2,3,8], %x: f32[2,3,8], %w: f32[8]",
        "%y, %y1, %y2 = layer_norm_grad(%d, %x, %w) {eps=1e-05} : f32[2,3,8], f32[8], f32[8]",
    ),
    "layer_norm_grad:no_gain": (
        "%d: f32[6,8], %x: f32[6,8]",
        "%y, %y1, %y2 = layer_norm_grad(%d, %x) {eps=0.001} : f32[6,8], f32[8], f32[8]",
    ),
    "gelu_grad": (
        "%d: f32[3,7], %x: f32[3,7]",
        '%y = gelu_grad(%d, %x) {approximate="none"} : f32[3,7]',
    ),
    "gelu_grad:tanh": (
        "%d: f32[3,7], %x: f32[3,7]",
        '%y = gelu_grad(%d, %x) {approximate="tanh"} : f32[3,7]',
    ),
    "embedding_grad": (
        "%i: i64[2,6], %d: f32[2,6,3]",
        "%y = embedding_grad(%i, %d) {num_rows=4} : f32[4,3]",
    ),
    "embedding_grad:acc": (
        "%i: i32[6], %d: f32[6,3], %a: f32[4,3]",
        "%y = embedding_grad(%i, %d, %a) {num_rows=4} : f32[4,3]",
    ),
    "embedding_grad:padding": (
        "%i: i64[2,6], %d: f32[2,6,3], %a: f32[4,3]",
        "%y = embedding_grad(%i, %d, %a) {num_rows=4, padding_idx=2} : f32[4,3]",
    ),
}


def _graph(case: str) -> Graph:
    signature, body = CASES[case]
    outputs = body.splitlines()[-1].split(" = ")[0]
    lines = "\n".join(f"  {line}" for line in body.splitlines())
    g = parse(f"graph @t({signature}) {{\n{lines}\n  return {outputs}\n}}\n")
    verify(g)
    return g


def _inputs(g: Graph) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for v in g.inputs:
        if v.name == "m":  # batch 1's query 0 sees no key; batch 0 masks key 4
            m = torch.zeros(v.shape)
            m[0, ..., 4] = float("-inf")
            m[1, :, 0] = float("-inf")
            out.append(m)
        elif v.type.is_float:
            out.append(torch.randn(v.shape, generator=gen))
        else:
            out.append(torch.randint(0, 4, v.shape, generator=gen).to(v.type.torch_dtype))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_decomposition_matches_reference(case: str) -> None:
    g = _graph(case)
    inputs = _inputs(g)
    want = interpret(g, *inputs)
    _decompose_all(g)
    verify(g)
    assert all(get_op(n.op).category == "primitive" for n in g.nodes)
    got = interpret(g, *inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lookups_of_the_padding_row_add_nothing_to_it() -> None:
    g = _graph("embedding_grad:padding")
    ids, dy, acc = _inputs(g)
    assert (ids == 2).sum() == 1  # a lookup of the padding row
    (got,) = interpret(g, ids, dy, acc)
    assert torch.equal(got[2], acc[2])  # the accumulator (a tied head's gradient) stays
    for row in (0, 1, 3):
        torch.testing.assert_close(got[row], acc[row] + dy[ids == row].sum(0))


def test_a_query_without_keys_has_infinite_lse_and_zero_gradients() -> None:
    g = _graph("attention_grad:mask")
    inputs = _inputs(g)
    lse_graph = _graph("attention_lse:mask")
    _, lse = interpret(lse_graph, *inputs[1:])
    assert torch.isinf(lse[1, :, 0]).all() and (lse[1, :, 0] > 0).all()
    assert torch.isfinite(lse[0]).all() and torch.isfinite(lse[1, :, 1:]).all()
    dq, dk, dv = interpret(g, *inputs)
    assert torch.equal(dq[1, 0], torch.zeros(6))
    assert all(torch.isfinite(x).all() for x in (dq, dk, dv))
    # batch 0 masks key 4 for every query: it gets no gradient
    assert torch.equal(dk[0, 4], torch.zeros(6)) and torch.equal(dv[0, 4], torch.zeros(4))
