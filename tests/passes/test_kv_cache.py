"""kv-cache: the step graph of a full-sequence graph, exact IR text, and one-line refusals of
graphs whose causality or position handling it cannot prove."""

import pytest
import torch

from cgc.errors import InputError
from cgc.ir import interpret, parse, verify
from cgc.passes import run_passes

# One layer of a GPT at 8 positions: a learned position table indexed by an arange constant,
# attention on thirds of a packed projection, a row-wise head. Weights are given below.
SOURCE = """\
graph @gpt(%ids: i64[2,8]) {
  param %wte: f32[16,8]
  param %wpe: f32[8,8]
  param %pos: i64[8]
  param %w_qkv: f32[24,8]
  param %w_out: f32[16,8]
  %tok = embedding(%wte, %ids) : f32[2,8,8]
  %where = embedding(%wpe, %pos) : f32[8,8]
  %x = add(%tok, %where) : f32[2,8,8]
  %qkv = linear(%x, %w_qkv) : f32[2,8,24]
  %q = slice(%qkv) {axis=2, end=8, start=0, step=1} : f32[2,8,8]
  %k = slice(%qkv) {axis=2, end=16, start=8, step=1} : f32[2,8,8]
  %v = slice(%qkv) {axis=2, end=24, start=16, step=1} : f32[2,8,8]
  %a = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.5} : f32[2,8,8]
  %h = add(%x, %a) : f32[2,8,8]
  %logits = linear(%h, %w_out) : f32[2,8,16]
  return %logits
}
"""

DECODE = """\
graph @gpt_decode(%ids: i64[2,1], %past_length: i64[1], %k_cache.0: f32[2,2,8,4], %v_cache.0: f32[2,2,8,4]) {
  param %wte: f32[16,8]
  param %wpe: f32[8,8]
  param %w_qkv: f32[24,8]
  param %w_out: f32[16,8]
  %tok = embedding(%wte, %ids) : f32[2,1,8]
  %where = embedding(%wpe, %past_length) : f32[1,8]
  %x = add(%tok, %where) : f32[2,1,8]
  %qkv = linear(%x, %w_qkv) : f32[2,1,24]
  %q = slice(%qkv) {axis=2, end=8, start=0, step=1} : f32[2,1,8]
  %k = slice(%qkv) {axis=2, end=16, start=8, step=1} : f32[2,1,8]
  %v = slice(%qkv) {axis=2, end=24, start=16, step=1} : f32[2,1,8]
  %expand = expand(%past_length) {shape=[2]} : i64[2]
  %a, %k_cache.0.next, %v_cache.0.next = cached_attention(%q, %k, %v, %k_cache.0, %v_cache.0, %expand) {num_heads=2, scale=0.5} : f32[2,1,8], f32[2,2,8,4], f32[2,2,8,4]
  %h = add(%x, %a) : f32[2,1,8]
  %logits = linear(%h, %w_out) : f32[2,1,16]
  return %logits, %k_cache.0.next, %v_cache.0.next
}
"""  # noqa: E501


def source():
    g = parse(SOURCE)
    gen = torch.Generator().manual_seed(0)
    for name, v in g.params.items():
        g.weights[name] = torch.randn(v.shape, generator=gen) * 0.5
    g.weights["pos"] = torch.arange(8)
    return g


def test_decode_graph_text() -> None:
    g = run_passes(source(), "kv-cache{tokens=1}")
    verify(g)
    assert str(g) == DECODE


def test_prefill_moves_the_last_row_above_the_head() -> None:
    g = run_passes(source(), "kv-cache{tokens=5}")
    lines = str(g).splitlines()
    # Only the last row reaches the residual add and the head; attention sees all five.
    assert lines[-6:-1] == [
        "  %x.last = slice(%x) {axis=1, end=5, start=4, step=1} : f32[2,1,8]",
        "  %a.last = slice(%a) {axis=1, end=5, start=4, step=1} : f32[2,1,8]",
        "  %h.last = add(%x.last, %a.last) : f32[2,1,8]",
        "  %logits = linear(%h.last, %w_out) : f32[2,1,16]",
        "  return %logits, %k_cache.0.next, %v_cache.0.next",
    ]
    assert "arange.5" in g.params


@pytest.mark.parametrize("tokens", [1, 3])
def test_step_graphs_match_the_full_graph(tokens) -> None:
    """Prefill 3 tokens then decode one at a time: each step's logits are the full graph's
    logits at that position."""
    full = source()
    ids = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(1))
    (expected,) = interpret(full, ids)
    prefill = run_passes(source(), "kv-cache{tokens=3}")
    decode = run_passes(source(), "kv-cache{tokens=1}")
    caches = [torch.zeros(2, 2, 8, 4), torch.zeros(2, 2, 8, 4)]
    logits, *caches = interpret(prefill, ids[:, :3], torch.tensor([0]), *caches)
    torch.testing.assert_close(logits[:, 0], expected[:, 2], rtol=1e-5, atol=1e-5)
    for t in range(3, 8):
        logits, *caches = interpret(decode, ids[:, t : t + 1], torch.tensor([t]), *caches)
        torch.testing.assert_close(logits[:, 0], expected[:, t], rtol=1e-5, atol=1e-5)


REFUSALS = {
    "not causal": (
        ("{causal=true,", "{causal=false,"),
        "kv-cache: attention at unknown source is not causal; cannot derive a cached decoder",
    ),
    "mixes positions": (
        (
            "  %logits = linear(%h, %w_out) : f32[2,8,16]",
            "  %m = reduce_mean(%h) {axes=[1], keepdim=true} : f32[2,1,8]\n"
            "  %hm = add(%h, %m) : f32[2,8,8]\n"
            "  %logits = linear(%hm, %w_out) : f32[2,8,16]",
        ),
        "kv-cache: reduce_mean at unknown source reduces over the positions; "
        "cannot derive a cached decoder",
    ),
    "selects the first position": (
        (
            "  return %logits",
            "  %first = slice(%logits) {axis=1, end=1, start=0, step=1} : f32[2,1,16]\n"
            "  return %first",
        ),
        "kv-cache: slice at unknown source selects positions other than all or the last; "
        "cannot derive a cached decoder",
    ),
    "attention left unfused": (
        (
            "  %a = attention(%q, %k, %v) {causal=true, num_heads=2, scale=0.5} : f32[2,8,8]",
            "  %p = softmax(%q) {axis=-1} : f32[2,8,8]\n  %a = mul(%p, %v) : f32[2,8,8]",
        ),
        "kv-cache: the graph has no fused attention (1 softmax left unfused: fuse-attention has "
        "not run, or its scores are more than a scaled QKᵀ plus a mask or bias, e.g. "
        "soft-capped); the pass caches fused attention only",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refuses_what_it_cannot_prove(case) -> None:
    (old, new), message = REFUSALS[case]
    assert old in SOURCE
    g = parse(SOURCE.replace(old, new))
    g.weights.update(source().weights)
    with pytest.raises(InputError) as e:
        run_passes(g, "kv-cache{tokens=1}")
    assert str(e.value) == message


def test_refuses_graphs_with_more_inputs() -> None:
    g = parse(SOURCE.replace("%ids: i64[2,8]", "%ids: i64[2,8], %mask: f32[2,8]"))
    with pytest.raises(InputError, match="expected one input, the token ids"):
        run_passes(g, "kv-cache{tokens=1}")


def test_tokens_must_fit_the_capacity() -> None:
    with pytest.raises(InputError, match="tokens=9 must be between 1 and the capacity 8"):
        run_passes(source(), "kv-cache{tokens=9}")


# One Llama-style layer: rotary tables known at compile time (row i turns position i), one
# key-value head shared by both query heads, a sliding window of 3.
ROPE_SOURCE = """\
graph @llama(%ids: i64[2,8]) {
  param %wte: f32[16,8]
  param %cos: f32[8,2]
  param %sin: f32[8,2]
  param %w_q: f32[8,8]
  param %w_k: f32[4,8]
  param %w_v: f32[4,8]
  param %w_out: f32[16,8]
  %x = embedding(%wte, %ids) : f32[2,8,8]
  %q = linear(%x, %w_q) : f32[2,8,8]
  %k = linear(%x, %w_k) : f32[2,8,4]
  %v = linear(%x, %w_v) : f32[2,8,4]
  %qr = rotary_embedding(%q, %cos, %sin) {num_heads=2, rotary_dim=4} : f32[2,8,8]
  %kr = rotary_embedding(%k, %cos, %sin) {num_heads=1, rotary_dim=4} : f32[2,8,4]
  %a = attention(%qr, %kr, %v) {causal=true, num_heads=2, num_kv_heads=1, scale=0.5, window=3} : f32[2,8,8]
  %logits = linear(%a, %w_out) : f32[2,8,16]
  return %logits
}
"""  # noqa: E501

ROPE_DECODE = """\
graph @llama_decode(%ids: i64[2,1], %past_length: i64[1], %k_cache.0: f32[2,1,8,4], %v_cache.0: f32[2,1,8,4]) {
  param %wte: f32[16,8]
  param %w_q: f32[8,8]
  param %w_k: f32[4,8]
  param %w_v: f32[4,8]
  param %w_out: f32[16,8]
  param %cos.reshape: f32[8,2]
  param %sin.reshape: f32[8,2]
  %x = embedding(%wte, %ids) : f32[2,1,8]
  %q = linear(%x, %w_q) : f32[2,1,8]
  %k = linear(%x, %w_k) : f32[2,1,4]
  %v = linear(%x, %w_v) : f32[2,1,4]
  %embedding = embedding(%cos.reshape, %past_length) : f32[1,2]
  %embedding_1 = embedding(%sin.reshape, %past_length) : f32[1,2]
  %qr = rotary_embedding(%q, %embedding, %embedding_1) {interleaved=false, num_heads=2, rotary_dim=4} : f32[2,1,8]
  %kr = rotary_embedding(%k, %embedding, %embedding_1) {interleaved=false, num_heads=1, rotary_dim=4} : f32[2,1,4]
  %expand = expand(%past_length) {shape=[2]} : i64[2]
  %a, %k_cache.0.next, %v_cache.0.next = cached_attention(%qr, %kr, %v, %k_cache.0, %v_cache.0, %expand) {num_heads=2, num_kv_heads=1, scale=0.5, window=3} : f32[2,1,8], f32[2,1,8,4], f32[2,1,8,4]
  %logits = linear(%a, %w_out) : f32[2,1,16]
  return %logits, %k_cache.0.next, %v_cache.0.next
}
"""  # noqa: E501


def rope_source(text: str = ROPE_SOURCE):
    g = parse(text)
    gen = torch.Generator().manual_seed(0)
    for name, v in g.params.items():
        g.weights[name] = torch.randn(v.shape, generator=gen)
    return g


def test_rotary_grouped_window_decode_text() -> None:
    """The cache holds the one shared key-value head; the tables are looked up at the new
    position; the window carries over."""
    g = run_passes(rope_source(), "kv-cache{tokens=1}")
    verify(g)
    assert str(g) == ROPE_DECODE


def test_rotary_grouped_window_steps_match_the_full_graph() -> None:
    full = rope_source()
    ids = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(1))
    (expected,) = interpret(full, ids)
    prefill = run_passes(rope_source(), "kv-cache{tokens=3}")
    decode = run_passes(rope_source(), "kv-cache{tokens=1}")
    caches = [torch.zeros(2, 1, 8, 4), torch.zeros(2, 1, 8, 4)]
    logits, *caches = interpret(prefill, ids[:, :3], torch.tensor([0]), *caches)
    torch.testing.assert_close(logits[:, 0], expected[:, 2], rtol=1e-5, atol=1e-5)
    for t in range(3, 8):  # past the window: the first keys drop out
        logits, *caches = interpret(decode, ids[:, t : t + 1], torch.tensor([t]), *caches)
        torch.testing.assert_close(logits[:, 0], expected[:, t], rtol=1e-5, atol=1e-5)


def test_refuses_rotary_tables_computed_from_the_inputs() -> None:
    text = ROPE_SOURCE.replace(
        "  %qr = rotary_embedding(%q, %cos, %sin)",
        '  %angle = cast(%ids) {dtype="f32"} : f32[2,8]\n'
        "  %angles = reshape(%angle) {shape=[2, 8, 1]} : f32[2,8,1]\n"
        "  %pairs = expand(%angles) {shape=[2, 8, 2]} : f32[2,8,2]\n"
        "  %c = cos(%pairs) : f32[2,8,2]\n"
        "  %s = sin(%pairs) : f32[2,8,2]\n"
        "  %qr = rotary_embedding(%q, %c, %s)",
    )
    with pytest.raises(InputError) as e:
        run_passes(rope_source(text), "kv-cache{tokens=1}")
    assert str(e.value) == (
        "kv-cache: rotary_embedding at unknown source turns positions by tables that depend "
        "on the inputs; cannot derive a cached decoder"
    )
