"""Fused backward ops: what the VJP rules of the fused forward ops emit.

Each takes the output's cotangent first, then what it needs from the forward, and returns the
cotangents of the forward's operands. Like the fused forward ops they carry a decomposition into
primitives. They are not differentiable themselves (no second derivatives).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import same_dtype
from cgc.ir.ops.nn import (
    ATTENTION_ATTRS,
    ATTENTION_ELIDE,
    _attention_flops,
    _infer_attention,
    _kv_heads,
    _merge_heads,
    _split_heads,
    attention_scores,
    check_padding_idx,
    decompose_scores,
    merge_heads,
    split_heads,
)
from cgc.ir.ops.registry import REQUIRED, register
from cgc.ir.types import TensorType

# -- attention ----------------------------------------------------------------------------------


def _infer_attention_grad(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list:
    dy, q, k, v, y, lse = ins[:6]
    forward = [q, k, v, *ins[6:]]
    (expected,) = _infer_attention(forward, attrs)
    lse_type = q.with_shape((q.shape[0], attrs["num_heads"], q.shape[1]))
    if dy != expected or y != expected or lse != lse_type:
        raise IRError(
            f"attention_grad: dy {dy}, y {y}, lse {lse} do not fit attention output {expected}"
            f" and log-sum-exp {lse_type}"
        )
    return [q, k, v]


def _attention_grad_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    """Scores recomputed, then dV = Pᵀ·dY, dP = dY·Vᵀ, dQ = dS·K, dK = dSᵀ·Q: twice the
    forward's matmuls and a half more."""
    forward = [ins[1], ins[2], ins[3]]
    return int(2.5 * _attention_flops(forward, [ins[4]], attrs))


def _decompose_attention_grad(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    dy, q, k, v, y, lse = ins[:6]
    heads = attrs["num_heads"]
    scores = decompose_scores(g, [q, k, v, *ins[6:]], attrs)
    b, t = q.shape[:2]
    lse = g.call("reshape", lse, shape=[b, heads, t, 1])
    probs = g.call("exp", g.call("sub", scores, lse))
    dyh, yh = (_split_heads(g, x, heads) for x in (dy, y))
    dv = g.call("matmul", g.call("transpose", probs, perm=[0, 1, 3, 2]), dyh)
    dprobs = g.call("matmul", dyh, _kv_heads(g, v, attrs, keys=True))
    rowdot = g.call("reduce_sum", g.call("mul", dyh, yh), axes=[-1], keepdim=True)
    dscores = g.call("mul", probs, g.call("sub", dprobs, rowdot))
    dscores = g.call("mul", dscores, g.constant(attrs["scale"], q.dtype))
    dq = g.call("matmul", dscores, _kv_heads(g, k, attrs))
    dk = g.call(
        "matmul", g.call("transpose", dscores, perm=[0, 1, 3, 2]), _split_heads(g, q, heads)
    )
    return [_merge_heads(g, dq), *(_merge_groups(g, x, attrs) for x in (dk, dv))]


def _merge_groups(g, x, attrs: Mapping[str, Any]):
    """A shared key or value head's gradient: the sum over the query heads it served, merged
    to [b, s, kv_heads·d]."""
    kv_heads = attrs["num_kv_heads"]
    b, heads, s, d = x.shape
    if kv_heads != heads:
        x = g.call("reshape", x, shape=[b, kv_heads, heads // kv_heads, s, d])
        x = g.call("reduce_sum", x, axes=[2], keepdim=False)
    return _merge_heads(g, x)


@register(
    "attention_grad",
    arity=(6, 7),
    attrs=ATTENTION_ATTRS,
    infer=_infer_attention_grad,
    flops=_attention_grad_flops,
    decompose=_decompose_attention_grad,
    num_outputs=3,
    category="fused",
    differentiable=False,
    elide=ATTENTION_ELIDE,
)
def attention_grad(
    dy: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    y: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None = None,
    **attrs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of `attention` from its output y and log-sum-exp lse (`attention_lse`).

    FlashAttention's backward: the weights are recomputed as P = exp(scores - lse), and the
    softmax's row term Σ_j P·dP is the row dot product dY·Y, so nothing [T, T] is saved. A
    shared key-value head's gradient sums over the query heads it serves.
    """
    heads, kv_heads = attrs["num_heads"], attrs["num_kv_heads"]
    group = heads // kv_heads
    probs = torch.exp(attention_scores(q, k, mask, **attrs) - lse.unsqueeze(-1))
    dyh, qh = split_heads(dy, heads), split_heads(q, heads)
    kh, vh = (split_heads(x, kv_heads, group) for x in (k, v))
    dv = probs.transpose(-1, -2) @ dyh
    rowdot = (dyh * split_heads(y, heads)).sum(-1, keepdim=True)
    dscores = probs * (dyh @ vh.transpose(-1, -2) - rowdot) * attrs["scale"]
    dk = dscores.transpose(-1, -2) @ qh

    def groups(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (kv_heads, group)).sum(2)

    return merge_heads(dscores @ kh), merge_heads(groups(dk)), merge_heads(groups(dv))


# -- layer norm ---------------------------------------------------------------------------------


def _infer_layer_norm_grad(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list:
    dy, x = ins[0], ins[1]
    if dy != x or any(w.shape != (x.shape[-1],) for w in ins[2:]):
        raise IRError(f"layer_norm_grad: dy {dy} and gain {list(ins[2:])} do not fit input {x}")
    same_dtype("layer_norm_grad", *ins)
    gain = x.with_shape((x.shape[-1],))
    return [x, gain, gain]


def _layer_norm_grad_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return 12 * ins[1].numel  # statistics again, x̂, gain, two row means, dx, dw and db sums


def _decompose_layer_norm_grad(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    dy, x = ins[0], ins[1]
    mean = g.call("reduce_mean", x, axes=[-1], keepdim=True)
    centred = g.call("sub", x, mean)
    var = g.call("reduce_mean", g.call("mul", centred, centred), axes=[-1], keepdim=True)
    rstd = g.call("rsqrt", g.call("add", var, g.constant(attrs["eps"], x.dtype)))
    xhat = g.call("mul", centred, rstd)
    dxhat = g.call("mul", dy, ins[2]) if len(ins) == 3 else dy
    mean_d = g.call("reduce_mean", dxhat, axes=[-1], keepdim=True)
    mean_dx = g.call("reduce_mean", g.call("mul", dxhat, xhat), axes=[-1], keepdim=True)
    inner = g.call("sub", g.call("sub", dxhat, mean_d), g.call("mul", xhat, mean_dx))
    rows = list(range(x.type.rank - 1))
    dw = g.call("reduce_sum", g.call("mul", dy, xhat), axes=rows)
    db = g.call("reduce_sum", dy, axes=rows)
    return [g.call("mul", inner, rstd), dw, db]


@register(
    "layer_norm_grad",
    arity=(2, 3),
    attrs={"eps": 1e-5},
    infer=_infer_layer_norm_grad,
    flops=_layer_norm_grad_flops,
    decompose=_decompose_layer_norm_grad,
    num_outputs=3,
    category="fused",
    differentiable=False,
)
def layer_norm_grad(
    dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None = None, *, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx, d(gain), d(bias) of `layer_norm(x, w, b)` (the gain is 1 without w).

    Mean and 1/std are recomputed from x rather than saved by the forward: x is kept for
    d(gain) anyway, the recomputation is one pass over a row, and `layer_norm` stays one op
    for inference and training.
    """
    mean = x.mean(-1, keepdim=True)
    rstd = torch.rsqrt(x.var(-1, keepdim=True, correction=0) + eps)
    xhat = (x - mean) * rstd
    dxhat = dy if w is None else dy * w
    inner = dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True)
    rows = tuple(range(x.dim() - 1))
    return inner * rstd, (dy * xhat).sum(rows), dy.sum(rows)


# -- gelu ---------------------------------------------------------------------------------------


def _infer_gelu_grad(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list:
    dy, x = ins
    if dy != x or not x.is_float or attrs["approximate"] not in ("none", "tanh"):
        raise IRError(f"gelu_grad: dy {dy} and x {x} (approximate={attrs['approximate']!r})")
    return [x]


def _gelu_grad_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return 12 * ins[1].numel


def _decompose_gelu_grad(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    dy, x = ins

    def c(v: float):
        return g.constant(v, x.dtype)

    def mul(*xs):
        out = xs[0]
        for v in xs[1:]:
            out = g.call("mul", out, v)
        return out

    if attrs["approximate"] == "tanh":
        # t = tanh(k·(x + a·x³)); d = ½(1 + t) + ½·x·(1 - t²)·k·(1 + 3a·x²)
        k, a = math.sqrt(2.0 / math.pi), 0.044715
        x2 = g.call("mul", x, x)
        t = g.call("tanh", mul(c(k), g.call("add", x, mul(c(a), x2, x))))
        left = mul(c(0.5), g.call("add", t, c(1.0)))
        slope = g.call("sub", c(1.0), g.call("mul", t, t))
        right = mul(c(0.5 * k), x, slope, g.call("add", c(1.0), mul(c(3 * a), x2)))
    else:
        # Φ(x) + x·φ(x), with Φ(x) = ½(1 + erf(x/√2)) and φ(x) = exp(-x²/2)/√(2π)
        left = mul(c(0.5), g.call("add", g.call("erf", mul(x, c(1.0 / math.sqrt(2.0)))), c(1.0)))
        density = g.call("exp", mul(x, x, c(-0.5)))
        right = mul(x, density, c(1.0 / math.sqrt(2.0 * math.pi)))
    return [g.call("mul", dy, g.call("add", left, right))]


@register(
    "gelu_grad",
    arity=2,
    attrs={"approximate": "none"},
    infer=_infer_gelu_grad,
    flops=_gelu_grad_flops,
    decompose=_decompose_gelu_grad,
    category="fused",
    differentiable=False,
)
def gelu_grad(dy: torch.Tensor, x: torch.Tensor, *, approximate: str) -> torch.Tensor:
    """dx of `gelu(x)`, exact (erf) or tanh-approximated, as torch's gelu_backward."""
    return torch.ops.aten.gelu_backward(dy, x, approximate=approximate)


# -- embedding ----------------------------------------------------------------------------------


def _infer_embedding_grad(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list:
    ids, dy = ins[:2]
    if ids.dtype not in ("i64", "i32") or dy.shape[:-1] != ids.shape or not dy.is_float:
        raise IRError(f"embedding_grad: ids {ids} and cotangent {dy} do not fit")
    if attrs["num_rows"] < 1:
        raise IRError(f"embedding_grad: num_rows must be positive, got {attrs['num_rows']}")
    check_padding_idx("embedding_grad", attrs["padding_idx"], attrs["num_rows"])
    out = dy.with_shape((attrs["num_rows"], dy.shape[-1]))
    if len(ins) == 3 and ins[2] != out:
        raise IRError(f"embedding_grad: accumulator {ins[2]} is not the table's type {out}")
    return [out]


def _embedding_grad_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    return ins[1].numel  # one add per looked-up element


def _decompose_embedding_grad(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    """A one-hot matrix of the ids, transposed, times the cotangent rows (plus acc); the
    padding row's id is -1 in the row table, so no lookup matches it."""
    ids, dy = ins[:2]
    n, rows, width = ids.type.numel, attrs["num_rows"], dy.shape[-1]
    name = g.fresh_name(f"row_ids_{rows}")
    table = torch.arange(rows, dtype=ids.type.torch_dtype)
    if attrs["padding_idx"] >= 0:
        table[attrs["padding_idx"]] = -1
    row_ids = g.add_param(name, TensorType((rows,), ids.dtype), table)
    column = g.call("reshape", ids, shape=[n, 1])
    onehot = g.call("cast", g.call("eq", column, row_ids), dtype=dy.dtype)
    flat = g.call("reshape", dy, shape=[n, width])
    rows_grad = g.call("matmul", g.call("transpose", onehot, perm=[1, 0]), flat)
    return [g.call("add", ins[2], rows_grad) if len(ins) == 3 else rows_grad]


@register(
    "embedding_grad",
    arity=(2, 3),
    attrs={"num_rows": REQUIRED, "padding_idx": -1},
    infer=_infer_embedding_grad,
    flops=_embedding_grad_flops,
    decompose=_decompose_embedding_grad,
    category="fused",
    differentiable=False,
    elide={"padding_idx"},
)
def embedding_grad(
    ids: torch.Tensor,
    dy: torch.Tensor,
    acc: torch.Tensor | None = None,
    *,
    num_rows: int,
    padding_idx: int = -1,
) -> torch.Tensor:
    """The table's gradient of `embedding(table, ids)`: row r sums dy where ids == r, added to
    `acc` when given (the gradient so far of a table with other uses, e.g. a tied LM head);
    lookups of row `padding_idx` add nothing."""
    width = dy.shape[-1]
    out = dy.new_zeros(num_rows, width) if acc is None else acc.clone()
    return out.index_add_(0, ids.reshape(-1), without_padding(ids, dy, padding_idx))


def without_padding(ids: torch.Tensor, dy: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """The cotangent rows [n, d] of the lookups, zero where the id is the padding row."""
    rows = dy.reshape(-1, dy.shape[-1])
    if padding_idx < 0:
        return rows
    return rows.masked_fill((ids.reshape(-1) == padding_idx).unsqueeze(-1), 0.0)
