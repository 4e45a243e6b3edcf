"""Neural-network ops: embedding lookup and the fused ops the passes create.

Fused ops (`linear`, `layer_norm`, `gelu`, `attention`, and `qkv_attention` for backends that
project and attend in one kernel) carry a decomposition into primitives, so any backend or the
verifier can fall back to the unfused form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cgc.errors import IRError
from cgc.ir.ops.infer import float_unary, same_dtype
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.types import TensorType


def _infer_embedding(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    table, ids = ins
    if table.rank != 2 or ids.dtype not in ("i64", "i32"):
        raise IRError(f"embedding: expected a [vocab, dim] table and int ids, got {table}, {ids}")
    return [TensorType(ids.shape + (table.shape[1],), table.dtype)]


@register("embedding", arity=2, infer=_infer_embedding)
def embedding(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of `table` selected by integer `ids`."""
    return F.embedding(ids, table)


# -- linear -------------------------------------------------------------------------------------


def _infer_linear(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w = ins[0], ins[1]
    if w.rank != 2 or x.shape[-1] != w.shape[1]:
        raise IRError(f"linear: input {x} does not fit weight {w} (expected [out, in])")
    if len(ins) == 3 and ins[2].shape != (w.shape[0],):
        raise IRError(f"linear: bias {ins[2]} does not match weight {w}")
    return [TensorType(x.shape[:-1] + (w.shape[0],), same_dtype("linear", *ins))]


def _linear_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    return 2 * outs[0].numel * ins[0].shape[-1] + (outs[0].numel if len(ins) == 3 else 0)


def _decompose_linear(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    x, w = ins[0], ins[1]
    y = g.call("matmul", x, g.call("transpose", w, perm=[1, 0]))
    return [g.call("add", y, ins[2]) if len(ins) == 3 else y]


@register(
    "linear",
    arity=(2, 3),
    infer=_infer_linear,
    flops=_linear_flops,
    decompose=_decompose_linear,
    category="fused",
)
def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ wᵀ + b, with the weight stored [out, in] as in torch."""
    return F.linear(x, w, b)


# -- layer norm ---------------------------------------------------------------------------------


def _infer_layer_norm(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ins[0]
    for p in ins[1:]:
        if p.shape != (x.shape[-1],):
            raise IRError(f"layer_norm: parameter {p} does not match the last axis of {x}")
    same_dtype("layer_norm", *ins)
    return [x]


def _layer_norm_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return 8 * ins[0].numel  # mean, centre, square, mean, scale, affine


def _decompose_layer_norm(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    x = ins[0]
    mean = g.call("reduce_mean", x, axes=[-1], keepdim=True)
    centred = g.call("sub", x, mean)
    var = g.call("reduce_mean", g.call("mul", centred, centred), axes=[-1], keepdim=True)
    eps = g.constant(attrs["eps"], x.dtype)
    y = g.call("mul", centred, g.call("rsqrt", g.call("add", var, eps)))
    if len(ins) > 1:
        y = g.call("mul", y, ins[1])
    if len(ins) > 2:
        y = g.call("add", y, ins[2])
    return [y]


@register(
    "layer_norm",
    arity=(1, 3),
    attrs={"eps": 1e-5},
    infer=_infer_layer_norm,
    flops=_layer_norm_flops,
    decompose=_decompose_layer_norm,
    category="fused",
)
def layer_norm(
    x: torch.Tensor, w: torch.Tensor | None = None, b: torch.Tensor | None = None, *, eps: float
) -> torch.Tensor:
    """Normalise the last axis to zero mean and unit variance, then scale and shift."""
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


# -- gelu ---------------------------------------------------------------------------------------


def _gelu_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return 8 * ins[0].numel


def _decompose_gelu(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    x = ins[0]

    def c(v: float):
        return g.constant(v, x.dtype)

    if attrs["approximate"] == "tanh":
        # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        inner = g.call("add", x, g.call("mul", c(0.044715), g.call("pow", x, c(3.0))))
        t = g.call("tanh", g.call("mul", c(math.sqrt(2.0 / math.pi)), inner))
    else:
        # 0.5·x·(1 + erf(x/√2))
        t = g.call("erf", g.call("mul", x, c(1.0 / math.sqrt(2.0))))
    return [g.call("mul", g.call("mul", x, c(0.5)), g.call("add", t, c(1.0)))]


def _check_gelu(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    if attrs["approximate"] not in ("none", "tanh"):
        raise IRError(f"gelu: approximate must be 'none' or 'tanh', got {attrs['approximate']!r}")
    return float_unary(ins, attrs)


@register(
    "gelu",
    arity=1,
    attrs={"approximate": "none"},
    infer=_check_gelu,
    flops=_gelu_flops,
    decompose=_decompose_gelu,
    category="fused",
)
def gelu(x: torch.Tensor, *, approximate: str) -> torch.Tensor:
    """Gaussian error linear unit, exact (erf) or tanh-approximated."""
    return F.gelu(x, approximate=approximate)


# -- attention ----------------------------------------------------------------------------------


def _infer_attention(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    q, k, v = ins[:3]
    heads = attrs["num_heads"]
    if q.rank != 3 or k.rank != 3 or v.rank != 3:
        raise IRError(f"attention: expected [batch, seq, heads·d_head] q, k, v, got {q}, {k}, {v}")
    if (
        q.shape[-1] % heads
        or k.shape != (q.shape[0], k.shape[1], q.shape[2])
        or v.shape[:2] != (k.shape[:2])
    ):
        raise IRError(f"attention: q {q}, k {k}, v {v} do not fit {heads} heads")
    if v.shape[-1] % heads:
        raise IRError(f"attention: value width {v.shape[-1]} is not divisible by {heads} heads")
    same_dtype("attention", q, k, v)
    return [q.with_shape(q.shape[:2] + (v.shape[-1],))]


def _attention_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    q, k, v = ins[:3]
    b, t, e = q.shape
    s = k.shape[1]
    heads = attrs["num_heads"]
    scores = b * heads * t * s
    return 2 * scores * (e // heads) + 2 * scores * (v.shape[-1] // heads) + 5 * scores


def _split_heads(g, x, heads: int, *, keys: bool = False):
    b, t, e = x.shape
    x = g.call("reshape", x, shape=[b, t, heads, e // heads])
    return g.call("transpose", x, perm=[0, 2, 3, 1] if keys else [0, 2, 1, 3])


def _decompose_attention(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    heads = attrs["num_heads"]
    q, k, v = ins[:3]
    scores = g.call("matmul", _split_heads(g, q, heads), _split_heads(g, k, heads, keys=True))
    scores = g.call("mul", scores, g.constant(attrs["scale"], q.dtype))
    if attrs["causal"]:
        t, s = q.shape[1], k.shape[1]
        name = g.fresh_name(f"causal_mask_{t}x{s}")
        mask = torch.ones(t, s, dtype=torch.bool).tril(s - t)
        keep = g.add_param(name, TensorType((t, s), "bool"), mask)
        scores = g.call("where", keep, scores, g.constant(float("-inf"), q.dtype))
    if len(ins) == 4:
        scores = g.call("add", scores, ins[3])
    probs = g.call("softmax", scores, axis=-1)
    if len(ins) == 4 or (attrs["causal"] and q.shape[1] > k.shape[1]):
        # A row of -inf scores has NaN weights; the op gives such a query zero weights.
        nan = g.call("ne", probs, probs)
        probs = g.call("where", nan, g.constant(0.0, q.dtype), probs)
    out = g.call("matmul", probs, _split_heads(g, v, heads))
    b, t = q.shape[:2]
    out = g.call("transpose", out, perm=[0, 2, 1, 3])
    return [g.call("reshape", out, shape=[b, t, v.shape[-1]])]


@register(
    "attention",
    arity=(3, 4),
    attrs={"num_heads": REQUIRED, "causal": False, "scale": REQUIRED},
    infer=_infer_attention,
    flops=_attention_flops,
    decompose=_decompose_attention,
    category="fused",
)
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_heads: int,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Multi-head scaled dot-product attention on [batch, seq, heads·d_head] q, k, v.

    An optional additive `mask` broadcasts to [batch, heads, q_seq, kv_seq]; `causal` masks
    keys after each query (aligned to the end when the key sequence is longer). A query whose
    every key is masked (all scores -inf) outputs zeros, as in torch SDPA and ONNX Attention, so
    padding queries stay finite and cannot spread NaN through masked keys (0·NaN is NaN).
    """
    b, t, _ = q.shape
    s = k.shape[1]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, x.shape[1], num_heads, -1).transpose(1, 2)

    bias = torch.zeros(t, s, dtype=q.dtype)
    if causal:
        bias = bias.masked_fill(~torch.ones(t, s, dtype=torch.bool).tril(s - t), float("-inf"))
    if mask is not None:
        bias = bias + mask
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(b, t, -1)


# -- attention with its packed input projection -------------------------------------------------


def _infer_qkv_attention(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ins[0]
    (qkv,) = _infer_linear(ins, attrs)
    if x.rank != 3 or qkv.shape[-1] % 3 or (qkv.shape[-1] // 3) % attrs["num_heads"]:
        raise IRError(
            f"qkv_attention: x {x} and weight {ins[1]} do not give three [batch, seq, e] "
            f"thirds of {attrs['num_heads']} heads each"
        )
    return [qkv.with_shape(qkv.shape[:2] + (qkv.shape[-1] // 3,))]


def _qkv_attention_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    x, w = ins[0], ins[1]
    qkv = x.with_shape(x.shape[:2] + (w.shape[0],))
    third = outs[0]
    return _linear_flops(ins, [qkv], attrs) + _attention_flops([third] * 3, outs, attrs)


def _decompose_qkv_attention(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    (qkv,) = _decompose_linear(g, ins, {})
    e = qkv.shape[-1] // 3
    q, k, v = (g.call("slice", qkv, axis=2, start=i * e, end=(i + 1) * e) for i in range(3))
    return _decompose_attention(g, [q, k, v], attrs)


@register(
    "qkv_attention",
    arity=(2, 3),
    attrs={"num_heads": REQUIRED, "causal": False, "scale": REQUIRED},
    infer=_infer_qkv_attention,
    flops=_qkv_attention_flops,
    decompose=_decompose_qkv_attention,
    category="fused",
)
def qkv_attention(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    num_heads: int,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Self-attention of x with its packed projection: q, k, v = thirds of linear(x, w, b).

    Backends with a kernel that projects and attends in one step (ONNX Runtime's contrib
    Attention) take this form; elsewhere it is `linear`, three slices and `attention`.
    """
    q, k, v = F.linear(x, w, b).chunk(3, dim=-1)
    return attention(q, k, v, num_heads=num_heads, causal=causal, scale=scale)
