"""`rotary_embedding`: rotary position embeddings (RoPE) on the heads of q or k, a fused op.

Each head's first `rotary_dim` features form rotary_dim/2 pairs (a, b); pair i at position p
turns by the angle whose cosine and sine are cos[p, i] and sin[p, i]:

    a' = a·cos - b·sin        b' = b·cos + a·sin

`interleaved=false` pairs feature i with i + rotary_dim/2 (GPT-NeoX, Llama: "rotate_half");
`interleaved=true` pairs 2i with 2i+1 (GPT-J, CodeGen: "rotate_every_two"). Features past
`rotary_dim` pass through (partial rotary: GPT-NeoX, Phi, GPT-J). The tables are operands, so
any frequency schedule (θ, NTK or Llama-3 scaling, attention scaling) is just other numbers;
they are [seq, rotary_dim/2] (one position per query, shared by the batch) or
[batch, seq, rotary_dim/2]. ONNX RotaryEmbedding (opset 23) has the same contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import same_dtype
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.types import TensorType


def _infer_rotary(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, cos, sin = ins
    heads, rotary_dim = attrs["num_heads"], attrs["rotary_dim"]
    if x.rank != 3 or x.shape[-1] % heads:
        raise IRError(f"rotary_embedding: expected [batch, seq, heads·d_head] x, got {x}")
    d_head = x.shape[-1] // heads
    if rotary_dim < 2 or rotary_dim % 2 or rotary_dim > d_head:
        raise IRError(f"rotary_embedding: rotary_dim {rotary_dim} is not even and <= {d_head}")
    b, t, _ = x.shape
    table = (t, rotary_dim // 2)
    for name, tab in (("cos", cos), ("sin", sin)):
        if tab.shape not in (table, (b, *table)):
            raise IRError(
                f"rotary_embedding: {name} {tab} is not [{t},{rotary_dim // 2}]"
                f" or [{b},{t},{rotary_dim // 2}]"
            )
    same_dtype("rotary_embedding", x, cos, sin)
    return [x]


def _rotary_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    x = ins[0]
    return 3 * x.numel * attrs["rotary_dim"] // (x.shape[-1] // attrs["num_heads"])


def _pairs(g, x, rotary_dim: int, interleaved: bool) -> tuple:
    """The a and b halves of each pair, from the [b, t, heads, d_head] features."""
    if interleaved:
        a = g.call("slice", x, axis=3, start=0, end=rotary_dim, step=2)
        b = g.call("slice", x, axis=3, start=1, end=rotary_dim, step=2)
    else:
        half = rotary_dim // 2
        a = g.call("slice", x, axis=3, start=0, end=half)
        b = g.call("slice", x, axis=3, start=half, end=rotary_dim)
    return a, b


def _decompose_rotary(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    x, cos, sin = ins
    heads, rotary_dim, interleaved = attrs["num_heads"], attrs["rotary_dim"], attrs["interleaved"]
    b, t, e = x.shape
    d_head = e // heads
    x4 = g.call("reshape", x, shape=[b, t, heads, d_head])
    # [.., t, r/2] tables broadcast over the head axis
    c, s = (
        g.call("reshape", tab, shape=[*tab.shape[:-1], 1, rotary_dim // 2]) for tab in (cos, sin)
    )
    a, bb = _pairs(g, x4, rotary_dim, interleaved)
    a2 = g.call("sub", g.call("mul", a, c), g.call("mul", bb, s))
    b2 = g.call("add", g.call("mul", bb, c), g.call("mul", a, s))
    if interleaved:
        pair = [b, t, heads, rotary_dim // 2, 1]
        rotated = g.call(
            "concat", g.call("reshape", a2, shape=pair), g.call("reshape", b2, shape=pair), axis=-1
        )
        rotated = g.call("reshape", rotated, shape=[b, t, heads, rotary_dim])
    else:
        rotated = g.call("concat", a2, b2, axis=-1)
    if rotary_dim < d_head:
        rest = g.call("slice", x4, axis=3, start=rotary_dim, end=d_head)
        rotated = g.call("concat", rotated, rest, axis=-1)
    return [g.call("reshape", rotated, shape=[b, t, e])]


@register(
    "rotary_embedding",
    arity=3,
    attrs={"num_heads": REQUIRED, "rotary_dim": REQUIRED, "interleaved": False},
    infer=_infer_rotary,
    flops=_rotary_flops,
    decompose=_decompose_rotary,
    category="fused",
)
def rotary_embedding(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    num_heads: int,
    rotary_dim: int,
    interleaved: bool,
) -> torch.Tensor:
    """Rotate the first rotary_dim features of each head of [batch, seq, heads·d_head] x by the
    angles whose cosines and sines are the [(batch,) seq, rotary_dim/2] tables."""
    b, t, e = x.shape
    x4 = x.reshape(b, t, num_heads, e // num_heads)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    if interleaved:
        a, bb = x4[..., 0:rotary_dim:2], x4[..., 1:rotary_dim:2]
        rotated = torch.stack((a * c - bb * s, bb * c + a * s), dim=-1).flatten(-2)
    else:
        a, bb = x4[..., : rotary_dim // 2], x4[..., rotary_dim // 2 : rotary_dim]
        rotated = torch.cat((a * c - bb * s, bb * c + a * s), dim=-1)
    return torch.cat((rotated, x4[..., rotary_dim:]), dim=-1).reshape(b, t, e)
