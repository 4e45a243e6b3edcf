"""cached_attention: the reference against attention over each sequence's own prefix, with
sequences of a batch at different lengths, and its registration (no gradient: inference)."""

import pytest
import torch

from cgc.errors import IRError
from cgc.ir import get_op
from cgc.ir.ops.nn import attention

B, H, D, C = 3, 2, 4, 10


def test_writes_new_slots_and_attends_to_each_prefix() -> None:
    gen = torch.Generator().manual_seed(0)
    past = torch.tensor([0, 4, 7])
    t = 2
    q, k, v = (torch.randn(B, t, H * D, generator=gen) for _ in range(3))
    k_cache, v_cache = (
        torch.randn(B, H, C, D, generator=gen),
        torch.randn(B, H, C, D, generator=gen),
    )
    out, k_next, v_next = get_op("cached_attention").impl(
        q, k, v, k_cache, v_cache, past, num_heads=H, scale=0.5
    )
    for b, p in enumerate(past.tolist()):
        new_k = k[b].reshape(t, H, D).transpose(0, 1)
        torch.testing.assert_close(k_next[b, :, p : p + t], new_k)
        torch.testing.assert_close(k_next[b, :, :p], k_cache[b, :, :p])  # untouched
        torch.testing.assert_close(k_next[b, :, p + t :], k_cache[b, :, p + t :])
        keys = k_next[b, :, : p + t].transpose(0, 1).reshape(1, p + t, H * D)
        values = v_next[b, :, : p + t].transpose(0, 1).reshape(1, p + t, H * D)
        expected = attention(q[b : b + 1], keys, values, num_heads=H, causal=True, scale=0.5)
        torch.testing.assert_close(out[b : b + 1], expected)


def test_capacity_is_checked() -> None:
    q = torch.zeros(1, 2, H * D)
    cache = torch.zeros(1, H, C, D)
    with pytest.raises(IRError, match="exceed capacity 10"):
        get_op("cached_attention").impl(
            q, q, q, cache, cache, torch.tensor([9]), num_heads=H, scale=1.0
        )


def test_is_inference_only() -> None:
    op = get_op("cached_attention")
    assert not op.differentiable and op.vjp is None and op.num_outputs == 3
