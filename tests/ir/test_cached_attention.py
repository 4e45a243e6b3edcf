"""cached_attention: the reference against attention over each sequence's own prefix, with
sequences of a batch at different lengths, grouped key-value heads, sliding windows and ALiBi,
and its registration (no gradient: inference)."""

import pytest
import torch

from cgc.errors import IRError
from cgc.ir import TensorType, get_op
from cgc.ir.ops.nn import attention

B, H, D, C = 3, 4, 4, 10


@pytest.mark.parametrize(
    "attrs",
    [
        {"num_kv_heads": H, "window": 0, "alibi_slopes": []},
        {"num_kv_heads": 2, "window": 0, "alibi_slopes": []},
        {"num_kv_heads": 1, "window": 3, "alibi_slopes": []},
        {"num_kv_heads": H, "window": 0, "alibi_slopes": [0.5, 0.25, 0.125, 0.0625]},
    ],
    ids=["mha", "gqa", "mqa_window", "alibi"],
)
def test_writes_new_slots_and_attends_to_each_prefix(attrs) -> None:
    gen = torch.Generator().manual_seed(0)
    past = torch.tensor([0, 4, 7])
    t, g = 2, attrs["num_kv_heads"]
    q = torch.randn(B, t, H * D, generator=gen)
    k, v = (torch.randn(B, t, g * D, generator=gen) for _ in range(2))
    k_cache, v_cache = (torch.randn(B, g, C, D, generator=gen) for _ in range(2))
    out, k_next, v_next = get_op("cached_attention").impl(
        q, k, v, k_cache, v_cache, past, num_heads=H, scale=0.5, **attrs
    )
    for b, p in enumerate(past.tolist()):
        new_k = k[b].reshape(t, g, D).transpose(0, 1)
        torch.testing.assert_close(k_next[b, :, p : p + t], new_k)
        torch.testing.assert_close(k_next[b, :, :p], k_cache[b, :, :p])  # untouched
        torch.testing.assert_close(k_next[b, :, p + t :], k_cache[b, :, p + t :])
        keys = k_next[b, :, : p + t].transpose(0, 1).reshape(1, p + t, g * D)
        values = v_next[b, :, : p + t].transpose(0, 1).reshape(1, p + t, g * D)
        expected = attention(
            q[b : b + 1], keys, values, num_heads=H, causal=True, scale=0.5, **attrs
        )
        torch.testing.assert_close(out[b : b + 1], expected)


def test_capacity_is_checked() -> None:
    q = torch.zeros(1, 2, H * D)
    cache = torch.zeros(1, H, C, D)
    with pytest.raises(IRError, match="exceed capacity 10"):
        get_op("cached_attention").impl(
            q,
            q,
            q,
            cache,
            cache,
            torch.tensor([9]),
            num_heads=H,
            scale=1.0,
            num_kv_heads=H,
            window=0,
            alibi_slopes=[],
        )


def test_cache_holds_the_key_value_heads() -> None:
    op = get_op("cached_attention")
    q, kv = TensorType((1, 2, 16), "f32"), TensorType((1, 2, 8), "f32")
    cache, past = TensorType((1, 2, 6, 4), "f32"), TensorType((1,), "i64")
    attrs = op.complete_attrs({"num_heads": 4, "num_kv_heads": 2, "scale": 0.5})
    assert op.infer([q, kv, kv, cache, cache, past], attrs) == [q, cache, cache]
    wrong = TensorType((1, 4, 6, 4), "f32")
    with pytest.raises(IRError, match=r"do not fit batch 1, 2 heads of 4$"):
        op.infer([q, kv, kv, wrong, wrong, past], attrs)


def test_is_inference_only() -> None:
    op = get_op("cached_attention")
    assert not op.differentiable and op.vjp is None and op.num_outputs == 3
