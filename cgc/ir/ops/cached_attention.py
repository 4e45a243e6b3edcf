"""`cached_attention`: causal self-attention of new tokens against a static-capacity K/V cache.

The op the `kv-cache` pass puts in place of every causal `attention` of a full-sequence graph:

    %out, %k_cache_out, %v_cache_out = cached_attention(%q, %k, %v, %k_cache, %v_cache, %past)
        {num_heads=H, scale=s}

- q, k, v: [B, T, H·D], the T new tokens of each of B sequences (T = the prompt chunk in prefill,
  1 in decode), heads packed in the last axis as `attention` takes them;
- k_cache, v_cache: [B, H, C, D], the keys and values of capacity C, one contiguous [C, D] row
  block per sequence and head (ONNX Runtime's BNSH cache layout, and a layout a wafer kernel can
  stream: a head's cache is one array on one PE region);
- past: i64 [B], how many tokens of each sequence the cache already holds (sequences may differ).

For every sequence b, token t is written at slot past[b] + t of both caches, and its query
attends to slots 0 ... past[b] + t: the causal mask, aligned to each sequence's own length.
Slots after that are never read, so whatever they hold (zeros, stale tokens) does not matter.
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
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.types import TensorType


def _infer(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    q, k, v, k_cache, v_cache, past = ins
    heads = attrs["num_heads"]
    if q.rank != 3 or q.shape != k.shape or q.shape != v.shape or q.shape[-1] % heads:
        raise IRError(
            f"cached_attention: q {q}, k {k}, v {v} must be one [batch, seq, heads·d_head] shape "
            f"with {heads} heads"
        )
    b, _, e = q.shape
    if k_cache.rank != 4 or k_cache.shape != v_cache.shape:
        raise IRError(f"cached_attention: caches {k_cache}, {v_cache} must be [b, heads, C, d]")
    cb, ch, _, cd = k_cache.shape
    if (cb, ch, cd) != (b, heads, e // heads):
        raise IRError(
            f"cached_attention: caches {k_cache} do not fit batch {b}, {heads} heads of "
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


def causal_cache_mask(past: torch.Tensor, new: int, capacity: int) -> torch.Tensor:
    """[B, 1, T, C] bool: slot j is visible to new token t of sequence b when j <= past[b] + t."""
    slots = torch.arange(capacity)
    last = past.reshape(-1, 1, 1, 1) + torch.arange(new).reshape(1, 1, -1, 1)
    return slots.reshape(1, 1, 1, -1) <= last


@register(
    "cached_attention",
    arity=6,
    attrs={"num_heads": REQUIRED, "scale": REQUIRED},
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write the new keys and values at slots past..past+T-1, then attend causally to the cache."""
    b, t, e = q.shape
    capacity = k_cache.shape[2]
    if int(past.min()) < 0 or int(past.max()) + t > capacity:
        raise IRError(
            f"cached_attention: {t} new tokens after {past.tolist()} cached exceed capacity "
            f"{capacity}"
        )

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, t, num_heads, e // num_heads).transpose(1, 2)

    slot = (past.reshape(-1, 1) + torch.arange(t)).reshape(b, 1, t, 1)
    index = slot.expand(b, num_heads, t, e // num_heads)
    k_cache = k_cache.scatter(2, index, heads(k))
    v_cache = v_cache.scatter(2, index, heads(v))
    mask = causal_cache_mask(past, t, capacity)
    out = torch.nn.functional.scaled_dot_product_attention(
        heads(q), k_cache, v_cache, attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2).reshape(b, t, e), k_cache, v_cache
