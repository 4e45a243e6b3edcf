"""Op registry: fused ops' decompositions agree with their reference implementations."""

import pytest
import torch

from cgc.ir import TensorType, all_ops, get_op, interpret, parse, verify
from cgc.ir.graph import Graph


def _decompose_all(g: Graph) -> None:
    for node in [n for n in g.nodes if get_op(n.op).decompose is not None]:
        with g.inserting_before(node, node.meta):
            outs = get_op(node.op).decompose(g, node.inputs, node.attrs)
        for old, new in zip(node.outputs, outs, strict=True):
            g.replace_all_uses(old, new)
        g.erase_node(node)


FUSED = {
    "linear": "%y = linear(%x, %w, %b) : f32[2,5,6]",
    "layer_norm": "%y = layer_norm(%x, %g, %b5) {eps=1e-05} : f32[2,5,5]",
    "gelu_erf": '%y = gelu(%x) {approximate="none"} : f32[2,5,5]',
    "gelu_tanh": '%y = gelu(%x) {approximate="tanh"} : f32[2,5,5]',
    "attention": "%y = attention(%x, %x, %x) {causal=false, num_heads=1, scale=0.5} : f32[2,5,5]",
    "attention_causal_mask": (
        "%y = attention(%x, %x, %x, %m) {causal=true, num_heads=1, scale=0.2} : f32[2,5,5]"
    ),
    "attention_gqa": (
        "%y = attention(%x, %kv, %kv) {causal=true, num_heads=4, num_kv_heads=2, scale=0.5}"
        " : f32[2,5,8]"
    ),
    "attention_mqa_window": (
        "%y = attention(%x, %k1, %k1) {causal=true, num_heads=4, num_kv_heads=1, scale=0.5,"
        " window=2} : f32[2,5,8]"
    ),
    "attention_alibi_mask": (
        "%y = attention(%x, %x, %x, %m) {alibi_slopes=[0.5, 0.25, 0.125, 0.0625], causal=true,"
        " num_heads=4, scale=0.5} : f32[2,5,8]"
    ),
    "attention_cross": (
        "%y = attention(%x, %mem, %mem) {causal=false, num_heads=2, scale=0.5} : f32[2,5,8]"
    ),
    "rms_norm": "%y = rms_norm(%x, %g8) {eps=1e-06} : f32[2,5,8]",
    "rms_norm_plain": "%y = rms_norm(%x) {eps=0.001} : f32[2,5,8]",
    "rotary_half": (
        "%y = rotary_embedding(%x, %cos, %sin) {interleaved=false, num_heads=2, rotary_dim=4}"
        " : f32[2,5,8]"
    ),
    "rotary_interleaved_batch": (
        "%y = rotary_embedding(%x, %bcos, %bsin) {interleaved=true, num_heads=2, rotary_dim=2}"
        " : f32[2,5,8]"
    ),
    "swiglu": "%y = swiglu(%x, %wg, %wu) : f32[2,5,6]",
    "qkv_attention": (
        "%y = qkv_attention(%x, %w, %b) {causal=true, num_heads=2, scale=0.7} : f32[2,5,2]"
    ),
}


@pytest.mark.parametrize("case", sorted(FUSED))
def test_decomposition_matches_reference(case: str) -> None:
    old = ("linear", "layer_norm", "qkv_attention", "attention", "attention_causal_mask")
    width = 5 if case in old or "gelu" in case else 8
    text = (
        f"graph @g(%x: f32[2,5,{width}]) {{\n  param %w: f32[6,5]\n  param %b: f32[6]\n"
        "  param %g: f32[5]\n  param %b5: f32[5]\n  param %m: f32[5,5]\n"
        "  param %kv: f32[2,5,4]\n  param %k1: f32[2,5,2]\n  param %mem: f32[2,7,8]\n"
        "  param %g8: f32[8]\n  param %cos: f32[5,2]\n  param %sin: f32[5,2]\n"
        "  param %bcos: f32[2,5,1]\n  param %bsin: f32[2,5,1]\n"
        "  param %wg: f32[6,8]\n  param %wu: f32[6,8]\n"
        f"  {FUSED[case]}\n  return %y\n}}\n"
    )
    g = parse(text)
    gen = torch.Generator().manual_seed(0)
    for name, v in g.params.items():
        g.weights[name] = torch.randn(v.shape, generator=gen)
    x = torch.randn(2, 5, width, generator=gen)
    verify(g)
    (ref,) = interpret(g, x)
    _decompose_all(g)
    verify(g)
    assert all(get_op(n.op).category == "primitive" for n in g.nodes)
    (got,) = interpret(g, x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "attention",
    [
        "attention(%q, %k, %k, %m) {causal=false, num_heads=2, scale=0.5}",
        "attention(%q, %k, %k) {causal=true, num_heads=2, scale=0.5}",  # 2 queries, no keys
    ],
    ids=["mask", "causal-more-queries"],
)
def test_decomposition_zeroes_queries_with_every_key_masked(attention: str) -> None:
    """As torch SDPA: a query whose scores are all -inf outputs zeros, not NaN."""
    keys = 4 if "%m" in attention else 2
    g = parse(
        f"graph @g(%q: f32[1,4,6], %k: f32[1,{keys},6], %m: f32[4,4]) {{\n"
        f"  %y = {attention} : f32[1,4,6]\n  return %y\n}}\n"
    )
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 6, generator=gen), torch.randn(1, keys, 6, generator=gen)
    mask = torch.zeros(4, 4).masked_fill(torch.ones(4, 4, dtype=torch.bool).triu(1), -torch.inf)
    mask[:2] = -torch.inf
    (ref,) = interpret(g, q, k, mask)
    _decompose_all(g)
    (got,) = interpret(g, q, k, mask)
    assert torch.equal(ref[0, :2], torch.zeros(2, 6))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_every_op_has_a_doc_and_flops() -> None:
    for name, op in all_ops().items():
        assert op.doc, name
    t = TensorType((4, 8), "f32")
    assert (
        get_op("matmul").flops([t, TensorType((8, 3), "f32")], [TensorType((4, 3), "f32")], {})
        == 2 * 4 * 3 * 8
    )


def test_interpreter_hook_sees_every_node() -> None:
    g = parse(
        "graph @g(%x: f32[3]) {\n  %a = exp(%x) : f32[3]\n  %b = neg(%a) : f32[3]\n  return %b\n}\n"
    )
    seen = []
    (out,) = interpret(g, torch.zeros(3), hook=lambda node, outs: seen.append((node.op, outs[0])))
    assert [op for op, _ in seen] == ["exp", "neg"]
    torch.testing.assert_close(seen[0][1], torch.ones(3))
    torch.testing.assert_close(out, -torch.ones(3))


# -- the decoder families' ops against torch and Hugging Face (their gradients: test_vjp.py) -----


def test_grouped_query_attention_is_torch_sdpa_with_enable_gqa() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 5, 32, generator=gen), *torch.randn(2, 2, 7, 8, generator=gen)
    out = get_op("attention").impl(
        q, k, v, num_heads=4, num_kv_heads=1, causal=True, scale=0.3, window=0, alibi_slopes=[]
    )
    heads = q.reshape(2, 5, 4, 8).transpose(1, 2)
    want = torch.nn.functional.scaled_dot_product_attention(
        heads,
        k.reshape(2, 7, 1, 8).transpose(1, 2),
        v.reshape(2, 7, 1, 8).transpose(1, 2),
        attn_mask=torch.ones(5, 7, dtype=torch.bool).tril(2),
        scale=0.3,
        enable_gqa=True,
    )
    torch.testing.assert_close(out, want.transpose(1, 2).reshape(2, 5, 32))


def test_position_bias_of_windows_and_alibi() -> None:
    from cgc.ir.ops.nn import position_bias

    bias = position_bias(3, 5, causal=True, window=2, alibi_slopes=[0.5], dtype=torch.float32)
    inf = float("-inf")
    # queries are positions 2, 3, 4 of 5; each sees itself and the key before it
    assert bias.tolist() == [
        [[inf, -0.5, 0.0, inf, inf], [inf, inf, -0.5, 0.0, inf], [inf, inf, inf, -0.5, 0.0]]
    ]


def test_rotary_embedding_is_hugging_face_rope() -> None:
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_rope
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=gen)
    angles = torch.randn(5, 4, generator=gen)
    cos, sin = angles.cos(), angles.sin()
    rope = get_op("rotary_embedding").impl
    half = rope(x, cos, sin, num_heads=2, rotary_dim=8, interleaved=False)
    heads = x.reshape(2, 5, 2, 8).transpose(1, 2)
    want, _ = llama_rope(
        heads, heads, torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]
    )
    torch.testing.assert_close(half, want.transpose(1, 2).reshape(2, 5, 16))
    pairs = rope(x, cos[:, :2], sin[:, :2], num_heads=2, rotary_dim=4, interleaved=True)
    split = x.reshape(2, 5, 2, 8)
    rotated = gptj_rope(split[..., :4], sin[None, :, :2], cos[None, :, :2])
    want = torch.cat([rotated, split[..., 4:]], -1).reshape(2, 5, 16)
    torch.testing.assert_close(pairs, want)


def test_elided_attributes_print_only_when_set() -> None:
    text = (
        "graph @g(%q: f32[1,4,8], %k: f32[1,4,4]) {\n"
        "  %a = attention(%q, %q, %q) {causal=true, num_heads=2, scale=0.5} : f32[1,4,8]\n"
        "  %b = attention(%q, %k, %k) {causal=true, num_heads=2, num_kv_heads=1, scale=0.5,"
        " window=2} : f32[1,4,8]\n"
        "  return %a, %b\n}\n"
    )
    g = parse(text)
    assert str(g) == text
    assert g.nodes[0].attrs == {
        "num_heads": 2,
        "causal": True,
        "scale": 0.5,
        "num_kv_heads": 2,  # the default: as many as the query heads
        "window": 0,
        "alibi_slopes": [],
    }
