"""`cached_attention`: causal self-attention of new tokens against a static-capacity K/V cache.

The op the `kv-cache` pass puts in place of every causal `attention` of a full-sequence graph:

    %out, %k_cache_out, %v_cache_out = cached_attention(%q, %k, %v, %k_cache, %v_cache, %past)
        {num_heads=H, scale=s, num_kv_heads=G, window=W, alibi_slopes=[...]}

- q: [B, T, H·D], k, v: [B, T, G·D], the T new tokens of each of B sequences (T = the prompt
  chunk in prefill, 1 in decode), heads packed in the last axis as `attention` takes them; G key
  and value heads (default H), each shared by H / G consecutive query heads as in `attention`;
- k_cache, v_cache: [B, G, C, D], the keys and values of capacity C, one contiguous [C, D] row
  block per sequence and key-value head (ONNX Runtime's BNSH cache layout, and a layout a wafer
  kernel can stream: a head's cache is one array on one PE region); a grouped-query model
  caches its G shared heads only;
- past: i64 [B], how many tokens of each sequence the cache already holds (sequences may differ).

For every sequence b, token t is written at slot past[b] + t of both caches, and its query
attends to slots 0 ... past[b] + t: the causal mask, aligned to each sequence's own length.
Slot j holds the token at position j, so `window` and `alibi_slopes` mean what they mean on
`attention`: the query at position p sees slots p - W + 1 ... p only, and ALiBi adds
slope_h · (j - p). Slots after p are never read, so whatever they hold (zeros, stale tokens)
does not matter.
The outputs are the attention output [B, T, H·D] and both caches with the new slots written and
slots 0 ... past[b] - 1 unchanged; slots after past[b] + T - 1 are unspecified (the reference
keeps them, ONNX Runtime keeps them in place and zeroes them in a fresh buffer), as nothing reads
them before writing them. The values are functional (SSA): a backend may update the cache in
place, as ONNX Runtime does through IO binding, since nothing reads the old cache afterwards.
The caller keeps past[b] + T <= C.

Decode is inference only, so the op registers `differentiable=False`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import same_dtype
from cgc.ir.ops.nn import ATTENTION_ELIDE, split_heads
from cgc.ir.ops.registry import REQUIRED, SameAs, register
from cgc.ir.types import TensorType


def _infer(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    q, k, v, k_cache, v_cache, past = ins
    heads, kv_heads = attrs["num_heads"], attrs["num_kv_heads"]
    if (
        q.rank != 3
        or k.shape != v.shape
        or k.rank != 3
        or k.shape[:2] != q.shape[:2]
        or heads % kv_heads
        or q.shape[-1] % heads
        or k.shape[-1] != q.shape[-1] // heads * kv_heads
    ):
        raise IRError(
            f"cached_attention: q {q}, k {k}, v {v} must be [batch, seq, heads·d_head] with "
            f"{heads} query and {kv_heads} key-value heads"
        )
    if attrs["alibi_slopes"] and len(attrs["alibi_slopes"]) != heads:
        raise IRError(f"cached_attention: alibi_slopes must hold one slope per head ({heads})")
    b, _, e = q.shape
    if k_cache.rank != 4 or k_cache.shape != v_cache.shape:
        raise IRError(f"cached_attention: caches {k_cache}, {v_cache} must be [b, heads, C, d]")
    cb, ch, _, cd = k_cache.shape
    if (cb, ch, cd) != (b, kv_heads, e // heads):
        raise IRError(
            f"cached_attention: caches {k_cache} do not fit batch {b}, {kv_heads} heads of "
            f"{e // heads}"
        )
    if past.shape != (b,) or past.dtype != "i64":
        raise IRError(f"cached_attention: past must be i64[{b}], got {past}")
    same_dtype("cached_attention", q, k, v, k_cache, v_cache)
    return [q, k_cache, v_cache]


def _flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    b, t, e = ins[0].shape
    capacity = ins[3].shape[2]
    scores = b * attrs["num_heads"] * t * capacity  # an upper bound: the cache may be part full
    return 4 * scores * (e // attrs["num_heads"]) + 5 * scores


def cache_bias(
    past: torch.Tensor,
    new: int,
    capacity: int,
    *,
    window: int = 0,
    alibi_slopes: Sequence[float] = (),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """What new token t of sequence b sees of the cache, at position p = past[b] + t: [B, 1, T,
    C] bool, slot j visible when j <= p (and j > p - window with a window); with ALiBi, the
    additive [B, H, T, C] bias slope_h · (j - p) on visible slots, -inf elsewhere."""
    slots = torch.arange(capacity).reshape(1, 1, 1, -1)
    position = past.reshape(-1, 1, 1, 1) + torch.arange(new).reshape(1, 1, -1, 1)
    visible = slots <= position
    if window:
        visible &= slots > position - window
    if not alibi_slopes:
        return visible
    slopes = torch.tensor(list(alibi_slopes), dtype=torch.float64).reshape(1, -1, 1, 1)
    bias = (slopes * (slots - position)).to(dtype)
    return bias.masked_fill(~visible, float("-inf"))


@register(
    "cached_attention",
    arity=6,
    attrs={
        "num_heads": REQUIRED,
        "scale": REQUIRED,
        "num_kv_heads": SameAs("num_heads"),
        "window": 0,
        "alibi_slopes": [],
    },
    elide=ATTENTION_ELIDE,
    infer=_infer,
    flops=_flops,
    num_outputs=3,
    category="fused",
    differentiable=False,
)
def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    past: torch.Tensor,
    *,
    num_heads: int,
    scale: float,
    num_kv_heads: int,
    window: int,
    alibi_slopes: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write the new keys and values at slots past..past+T-1, then attend causally to the cache."""
    b, t, e = q.shape
    kv_heads, capacity, d = k_cache.shape[1:]
    if int(past.min()) < 0 or int(past.max()) + t > capacity:
        raise IRError(
            f"cached_attention: {t} new tokens after {past.tolist()} cached exceed capacity "
            f"{capacity}"
        )

    slot = (past.reshape(-1, 1) + torch.arange(t)).reshape(b, 1, t, 1)
    index = slot.expand(b, kv_heads, t, d)
    k_cache = k_cache.scatter(2, index, split_heads(k, kv_heads))
    v_cache = v_cache.scatter(2, index, split_heads(v, kv_heads))
    bias = cache_bias(past, t, capacity, window=window, alibi_slopes=alibi_slopes, dtype=q.dtype)
    group = num_heads // kv_heads
    keys, values = (x.repeat_interleave(group, 1) if group > 1 else x for x in (k_cache, v_cache))
    out = torch.nn.functional.scaled_dot_product_attention(
        split_heads(q, num_heads), keys, values, attn_mask=bias, scale=scale
    )
    return out.transpose(1, 2).reshape(b, t, e), k_cache, v_cache
