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


def _full_width(g, table, rotary_dim: int, interleaved: bool):
    """A [.., seq, rotary_dim/2] table as [.., seq, 1, rotary_dim], each angle once per
    feature of its pair, broadcasting over the heads."""
    half = rotary_dim // 2
    table = g.call("reshape", table, shape=[*table.shape[:-1], 1, half])
    if not interleaved:
        return g.call("concat", table, table, axis=-1)
    pairs = g.call("reshape", table, shape=[*table.shape, 1])
    pairs = g.call("concat", pairs, pairs, axis=-1)
    return g.call("reshape", pairs, shape=[*table.shape[:-1], rotary_dim])


def _rotated(g, x, rotary_dim: int, interleaved: bool):
    """rotate_half(x) = concat(-b, a), or rotate_every_two(x) = interleave(-b, a)."""
    if not interleaved:
        a = g.call("slice", x, axis=3, start=0, end=rotary_dim // 2)
        b = g.call("slice", x, axis=3, start=rotary_dim // 2, end=rotary_dim)
        return g.call("concat", g.call("neg", b), a, axis=-1)
    a = g.call("slice", x, axis=3, start=0, end=rotary_dim, step=2)
    b = g.call("slice", x, axis=3, start=1, end=rotary_dim, step=2)
    pair = [*a.shape, 1]
    pairs = g.call(
        "concat", g.call("reshape", g.call("neg", b), shape=pair), g.call("reshape", a, shape=pair),
        axis=-1,
    )  # fmt: skip
    return g.call("reshape", pairs, shape=list(x.shape))


def _decompose_rotary(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    """x·C + rotate(x)·S on the heads, as Hugging Face models write it (fuse-rotary-embedding
    matches this form), C and S the tables at full width."""
    x, cos, sin = ins
    heads, rotary_dim, interleaved = attrs["num_heads"], attrs["rotary_dim"], attrs["interleaved"]
    b, t, e = x.shape
    d_head = e // heads
    x4 = g.call("reshape", x, shape=[b, t, heads, d_head])
    part = x4 if rotary_dim == d_head else g.call("slice", x4, axis=3, start=0, end=rotary_dim)
    c, s = (_full_width(g, tab, rotary_dim, interleaved) for tab in (cos, sin))
    rotated = g.call(
        "add",
        g.call("mul", part, c),
        g.call("mul", _rotated(g, part, rotary_dim, interleaved), s),
    )
    if rotary_dim < d_head:
        rest = g.call("slice", x4, axis=3, start=rotary_dim, end=d_head)
        rotated = g.call("concat", rotated, rest, axis=-1)
    return [g.call("reshape", rotated, shape=[b, t, e])]


def _rotary_vjp(g, node, cotangents: Sequence) -> list:
    """A rotation's transpose turns back: dx = rotary_embedding(dy, cos, -sin). The tables are
    positions' angles, constants: no gradient."""
    (dy,) = cotangents
    if dy is None:
        return [None, None, None]
    _, cos, sin = node.inputs
    return [g.call("rotary_embedding", dy, cos, g.call("neg", sin), **node.attrs), None, None]


@register(
    "rotary_embedding",
    arity=3,
    attrs={"num_heads": REQUIRED, "rotary_dim": REQUIRED, "interleaved": False},
    infer=_infer_rotary,
    flops=_rotary_flops,
    decompose=_decompose_rotary,
    category="fused",
    vjp=_rotary_vjp,
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
