"""The wafer's attention backward: what it refuses."""

import pytest

from cgc.backends.cerebras import WSE2, kernel_for
from cgc.errors import UnsupportedOpError


@pytest.mark.parametrize(
    "attrs",
    ["num_kv_heads=1", "window=2", "alibi_slopes=[0.5, 0.25]"],
)
def test_shared_heads_windows_and_alibi_are_refused_in_one_line(one_node, attrs) -> None:
    kv = 2 if attrs == "num_kv_heads=1" else 4
    body = (
        f"%y, %dk, %dv = attention_grad(%d, %q, %k, %v, %o, %l) "
        f"{{causal=true, num_heads=2, scale=0.5, {attrs}}} : f32[1,5,4], f32[1,5,{kv}], "
        f"f32[1,5,{kv}]"
    )
    inputs = (
        f"%d: f32[1,5,4], %q: f32[1,5,4], %k: f32[1,5,{kv}], %v: f32[1,5,{kv}], "
        "%o: f32[1,5,4], %l: f32[1,2,5]"
    )
    with pytest.raises(UnsupportedOpError, match="one key-value head per query head"):
        kernel_for(one_node(body, inputs), WSE2, "fp32")
