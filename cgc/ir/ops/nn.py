"""Neural-network ops: embedding lookup and the fused ops the passes create.

Fused ops (`linear`, `layer_norm`, `gelu`, `attention`, and `qkv_attention` for backends that
project and attend in one kernel) carry a decomposition into primitives, so any backend or the
verifier can fall back to the unfused form. `attention_lse` is attention as training graphs
run it. Their VJP rules emit the fused backward ops of `cgc.ir.ops.backward`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cgc.errors import IRError
from cgc.ir.ops.infer import float_unary, same_dtype
from cgc.ir.ops.registry import REQUIRED, SameAs, get_op, register
from cgc.ir.ops.vjp import replace_forward
from cgc.ir.types import TensorType


def _infer_embedding(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    table, ids = ins
    if table.rank != 2 or ids.dtype not in ("i64", "i32"):
        raise IRError(f"embedding: expected a [vocab, dim] table and int ids, got {table}, {ids}")
    check_padding_idx("embedding", attrs["padding_idx"], table.shape[0])
    return [TensorType(ids.shape + (table.shape[1],), table.dtype)]


def check_padding_idx(op: str, padding_idx: int, rows: int) -> None:
    """padding_idx is a row of the table, or -1 for none."""
    if not -1 <= padding_idx < rows:
        raise IRError(f"{op}: padding_idx {padding_idx} is not a row of {rows} (or -1 for none)")


def _embedding_vjp(g, node, cotangents):
    """The table's gradient: each row gets the sum of the cotangents of its lookups (none for
    the padding row)."""
    table, ids = node.inputs
    rows, padding = table.shape[0], node.attrs["padding_idx"]
    return [g.call("embedding_grad", ids, cotangents[0], num_rows=rows, padding_idx=padding), None]


# padding_idx (torch.nn.Embedding's) changes only the gradient: lookups of that row add nothing
# to it, as PyTorch defines it.
@register(
    "embedding",
    arity=2,
    attrs={"padding_idx": -1},
    infer=_infer_embedding,
    vjp=_embedding_vjp,
    elide={"padding_idx"},
)
def embedding(table: torch.Tensor, ids: torch.Tensor, *, padding_idx: int = -1) -> torch.Tensor:
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


def _linear_vjp(g, node, cotangents):
    """Two matmuls: dx = dy·W, dW = dyᵀ·x over the rows (tokens) flattened; db = Σ dy."""
    x, w = node.inputs[0], node.inputs[1]
    dy = cotangents[0]
    dx = g.call("matmul", dy, w)
    rows = x.type.numel // x.shape[-1]
    if x.type.rank != 2:
        dy = g.call("reshape", dy, shape=[rows, w.shape[0]])
        x = g.call("reshape", x, shape=[rows, w.shape[1]])
    dw = g.call("matmul", g.call("transpose", dy, perm=[1, 0]), x)
    if len(node.inputs) == 2:
        return [dx, dw]
    return [dx, dw, g.call("reduce_sum", dy, axes=[0])]


@register(
    "linear",
    arity=(2, 3),
    infer=_infer_linear,
    flops=_linear_flops,
    decompose=_decompose_linear,
    category="fused",
    vjp=_linear_vjp,
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


def _layer_norm_vjp(g, node, cotangents):
    inputs = [cotangents[0], *node.inputs[:2]]
    grads = g.add_node("layer_norm_grad", inputs, node.attrs).outputs
    return grads[: len(node.inputs)]


@register(
    "layer_norm",
    arity=(1, 3),
    attrs={"eps": 1e-5},
    infer=_infer_layer_norm,
    flops=_layer_norm_flops,
    decompose=_decompose_layer_norm,
    category="fused",
    vjp=_layer_norm_vjp,
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


def _gelu_vjp(g, node, cotangents):
    return [g.call("gelu_grad", cotangents[0], node.inputs[0], **node.attrs)]


@register(
    "gelu",
    arity=1,
    attrs={"approximate": "none"},
    infer=_check_gelu,
    flops=_gelu_flops,
    decompose=_decompose_gelu,
    category="fused",
    vjp=_gelu_vjp,
)
def gelu(x: torch.Tensor, *, approximate: str) -> torch.Tensor:
    """Gaussian error linear unit, exact (erf) or tanh-approximated."""
    return F.gelu(x, approximate=approximate)


# -- attention ----------------------------------------------------------------------------------


def _infer_attention(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    q, k, v = ins[:3]
    heads, kv_heads = attrs["num_heads"], attrs["num_kv_heads"]
    if q.rank != 3 or k.rank != 3 or v.rank != 3:
        raise IRError(f"attention: expected [batch, seq, heads·d_head] q, k, v, got {q}, {k}, {v}")
    if kv_heads < 1 or heads % kv_heads:
        raise IRError(f"attention: {heads} query heads do not share {kv_heads} key-value heads")
    d_head = q.shape[-1] // heads
    if (
        q.shape[-1] % heads
        or k.shape != (q.shape[0], k.shape[1], kv_heads * d_head)
        or v.shape[:2] != (k.shape[:2])
    ):
        raise IRError(
            f"attention: q {q}, k {k}, v {v} do not fit {heads} query and {kv_heads} key heads"
        )
    if v.shape[-1] % kv_heads:
        raise IRError(f"attention: value width {v.shape[-1]} is not divisible by {kv_heads} heads")
    if attrs["window"] < 0 or (attrs["window"] and not attrs["causal"]):
        raise IRError(f"attention: window={attrs['window']} needs causal=true and window >= 0")
    if attrs["alibi_slopes"] and len(attrs["alibi_slopes"]) != heads:
        raise IRError(f"attention: {len(attrs['alibi_slopes'])} ALiBi slopes for {heads} heads")
    same_dtype("attention", q, k, v)
    return [q.with_shape(q.shape[:2] + (heads * (v.shape[-1] // kv_heads),))]


def _attention_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    q, k, v = ins[:3]
    b, t, e = q.shape
    s = k.shape[1]
    heads = attrs["num_heads"]
    scores = b * heads * t * s
    return 2 * scores * (e // heads) + 2 * scores * (outs[0].shape[-1] // heads) + 5 * scores


# The attention family (attention, attention_lse, attention_grad in backward.py) shares its
# attributes, how heads are split and how the causal, window, ALiBi and additive masks make the
# scores, in torch (reference implementations) and in IR (decompositions): a new masking
# attribute extends all of them here. k and v have `num_kv_heads` heads, each shared by
# num_heads / num_kv_heads consecutive query heads (grouped-query attention; 1: multi-query).
# The attributes added after the first release are left out of the text at their default.
ATTENTION_ATTRS = {
    "num_heads": REQUIRED,
    "causal": False,
    "scale": REQUIRED,
    "num_kv_heads": SameAs("num_heads"),
    "window": 0,
    "alibi_slopes": [],
}
ATTENTION_ELIDE = ("num_kv_heads", "window", "alibi_slopes")


def causal_keep(t: int, s: int, window: int = 0) -> torch.Tensor:
    """Bool [t, s]: which keys each query sees; aligned to the end when s > t (as torch), and
    with a `window`, only the last `window` keys up to the query's own."""
    keep = torch.ones(t, s, dtype=torch.bool).tril(s - t)
    return keep & ~torch.ones(t, s, dtype=torch.bool).tril(s - t - window) if window else keep


def position_bias(
    t: int, s: int, *, causal: bool, window: int, alibi_slopes: Sequence[float], dtype
) -> torch.Tensor | None:
    """The bias the causal, window and alibi_slopes attrs put on the scores, [heads|1, t, s],
    or None when they add nothing.

    Query i sits at position i + s - t (queries are the last positions of the keys). ALiBi adds
    slope_h · (j - position of i): 0 on the diagonal, falling linearly into the past; a constant
    per query, so equal under softmax to BLOOM's slope_h · j.
    """
    if not (causal or alibi_slopes):
        return None
    bias = torch.zeros(1, t, s, dtype=dtype)
    if alibi_slopes:
        offset = torch.arange(s)[None, :] - torch.arange(t)[:, None] - (s - t)
        slopes = torch.tensor(list(alibi_slopes), dtype=torch.float64)[:, None, None]
        bias = (slopes * offset).to(dtype)
    if causal:
        bias = bias.masked_fill(~causal_keep(t, s, window), float("-inf"))
    return bias


def split_heads(x: torch.Tensor, num_heads: int, repeat: int = 1) -> torch.Tensor:
    """[batch, seq, heads·d] -> [batch, heads·repeat, seq, d], each head `repeat` times."""
    heads = x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)
    return heads.repeat_interleave(repeat, 1) if repeat > 1 else heads


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, d] -> [batch, seq, heads·d]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def attention_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    causal: bool,
    window: int = 0,
    alibi_slopes: Sequence[float] = (),
) -> torch.Tensor:
    """The additive bias on the scores: -inf outside the causal window, ALiBi, plus `mask`;
    [t, s] without ALiBi (the form earlier releases rounded with), else [heads, t, s]."""
    t, s = q.shape[1], k.shape[1]
    bias = position_bias(
        t, s, causal=causal, window=window, alibi_slopes=alibi_slopes, dtype=q.dtype
    )
    bias = torch.zeros(t, s, dtype=q.dtype) if bias is None else bias
    bias = bias[0] if bias.shape[0] == 1 else bias
    return bias if mask is None else bias + mask


def attention_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    num_heads: int,
    causal: bool,
    scale: float,
    num_kv_heads: int,
    window: int,
    alibi_slopes: Sequence[float],
) -> torch.Tensor:
    """scale·q·kᵀ + bias per head: [batch, heads, q_seq, kv_seq]."""
    kh = split_heads(k, num_kv_heads, num_heads // num_kv_heads)
    scores = split_heads(q, num_heads) @ kh.transpose(-1, -2)
    bias = attention_bias(q, k, mask, causal=causal, window=window, alibi_slopes=alibi_slopes)
    return scores * scale + bias


def _split_heads(g, x, heads: int, *, keys: bool = False, repeat: int = 1):
    """[b, t, heads·d] as [b, heads·repeat, t, d] ([.., d, t] for `keys`), each head `repeat`
    times (torch's repeat_interleave on the head axis, Hugging Face's repeat_kv)."""
    b, t, e = x.shape
    x = g.call("reshape", x, shape=[b, t, heads, e // heads])
    x = g.call("transpose", x, perm=[0, 2, 1, 3])
    if repeat > 1:
        d = e // heads
        x = g.call("reshape", x, shape=[b, heads, 1, t, d])
        x = g.call("expand", x, shape=[b, heads, repeat, t, d])
        x = g.call("reshape", x, shape=[b, heads * repeat, t, d])
    return g.call("transpose", x, perm=[0, 1, 3, 2]) if keys else x


def _merge_heads(g, x):
    b, h, t, d = x.shape
    return g.call("reshape", g.call("transpose", x, perm=[0, 2, 1, 3]), shape=[b, t, h * d])


def _kv_heads(g, x, attrs: Mapping[str, Any], *, keys: bool = False):
    """k or v split into its heads, each repeated for the query heads it serves."""
    group = attrs["num_heads"] // attrs["num_kv_heads"]
    return _split_heads(g, x, attrs["num_kv_heads"], keys=keys, repeat=group)


def decompose_scores(g, ins: Sequence, attrs: Mapping[str, Any]):
    """The scores of attention operands `ins` (q, k, v[, mask]) in primitives, as
    `attention_scores` computes them."""
    q, k = ins[:2]
    t, s = q.shape[1], k.shape[1]
    scores = g.call(
        "matmul", _split_heads(g, q, attrs["num_heads"]), _kv_heads(g, k, attrs, keys=True)
    )
    scores = g.call("mul", scores, g.constant(attrs["scale"], q.dtype))
    if attrs["causal"]:
        name = g.fresh_name(f"causal_mask_{t}x{s}")
        keep = g.add_param(name, TensorType((t, s), "bool"), causal_keep(t, s, attrs["window"]))
        scores = g.call("where", keep, scores, g.constant(float("-inf"), q.dtype))
    if attrs["alibi_slopes"]:
        alibi = position_bias(
            t, s, causal=False, window=0, alibi_slopes=attrs["alibi_slopes"],
            dtype=q.type.torch_dtype,
        )  # fmt: skip
        name = g.fresh_name(f"alibi_{t}x{s}")
        scores = g.call("add", scores, g.add_param(name, TensorType.of(alibi), alibi))
    if len(ins) == 4:
        scores = g.call("add", scores, ins[3])
    return scores


def _can_mask_rows(ins: Sequence, attrs: Mapping[str, Any]) -> bool:
    """Whether some query may see no key at all (then its weights are zeros, not NaN)."""
    return len(ins) == 4 or (attrs["causal"] and ins[0].shape[1] > ins[1].shape[1])


def _decompose_attention(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    probs = g.call("softmax", decompose_scores(g, ins, attrs), axis=-1)
    q, v = ins[0], ins[2]
    if _can_mask_rows(ins, attrs):
        # A row of -inf scores has NaN weights; the op gives such a query zero weights.
        nan = g.call("ne", probs, probs)
        probs = g.call("where", nan, g.constant(0.0, q.dtype), probs)
    return [_merge_heads(g, g.call("matmul", probs, _kv_heads(g, v, attrs)))]


def _attention_vjp(g, node, cotangents):
    """Swap the forward node for `attention_lse`, whose log-sum-exp lets `attention_grad`
    recompute the softmax (FlashAttention's backward): no [T, T] tensor is kept."""
    return _attention_lse_vjp(g, replace_forward(g, node, "attention_lse"), [*cotangents, None])


@register(
    "attention",
    arity=(3, 4),
    attrs=ATTENTION_ATTRS,
    infer=_infer_attention,
    flops=_attention_flops,
    decompose=_decompose_attention,
    category="fused",
    vjp=_attention_vjp,
    elide=ATTENTION_ELIDE,
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
    num_kv_heads: int,
    window: int,
    alibi_slopes: Sequence[float],
) -> torch.Tensor:
    """Multi-head scaled dot-product attention on [batch, seq, heads·d_head] q, k, v.

    k and v have `num_kv_heads` heads, each shared by num_heads / num_kv_heads consecutive query
    heads. Queries and keys may differ in length (cross-attention, or queries that are the last
    positions of the keys). The scores are q·kᵀ·scale plus the bias of `causal` (keys after a
    query masked, aligned to the end when the keys are longer), `window` (with causal: each
    query sees its last `window` keys, itself included) and `alibi_slopes` (see
    `position_bias`), plus an optional additive `mask` that broadcasts to [batch, heads, q_seq,
    kv_seq]. A query whose every key is masked (all scores -inf) outputs zeros, as in torch
    SDPA and ONNX Attention, so padding queries stay finite and cannot spread NaN through
    masked keys (0·NaN is NaN).
    """
    group = num_heads // num_kv_heads
    qh = split_heads(q, num_heads)
    kh, vh = (split_heads(x, num_kv_heads, group) for x in (k, v))
    bias = attention_bias(q, k, mask, causal=causal, window=window, alibi_slopes=alibi_slopes)
    return merge_heads(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, scale=scale))


# -- attention that also returns its log-sum-exp (the training forward) -------------------------


def _infer_attention_lse(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (y,) = _infer_attention(ins, attrs)
    q = ins[0]
    return [y, q.with_shape((q.shape[0], attrs["num_heads"], q.shape[1]))]


def _decompose_attention_lse(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    scores = decompose_scores(g, ins, attrs)
    q, v = ins[0], ins[2]
    top = g.call("reduce_max", scores, axes=[-1], keepdim=True)
    ninf = g.constant(float("-inf"), q.dtype)
    # A fully masked row has max -inf; shift it by 0 so exp gives zeros, not NaN.
    top = g.call("where", g.call("eq", top, ninf), g.constant(0.0, q.dtype), top)
    exp = g.call("exp", g.call("sub", scores, top))
    total = g.call("reduce_sum", exp, axes=[-1], keepdim=True)
    lse = g.call("add", top, g.call("log", total))
    lse = g.call(
        "where",
        g.call("eq", total, g.constant(0.0, q.dtype)),
        g.constant(float("inf"), q.dtype),
        lse,
    )
    probs = g.call("exp", g.call("sub", scores, lse))
    out = _merge_heads(g, g.call("matmul", probs, _kv_heads(g, v, attrs)))
    b, h, t = q.shape[0], attrs["num_heads"], q.shape[1]
    return [out, g.call("reshape", lse, shape=[b, h, t])]


def _attention_lse_vjp(g, node, cotangents):
    dy, dlse = cotangents
    if dlse is not None or dy is None:
        raise IRError(
            "attention_lse: the log-sum-exp output is a residual for the backward pass; a loss"
            " that depends on it cannot be differentiated"
        )
    y, lse = node.outputs
    grads = g.add_node(
        "attention_grad", [dy, *node.inputs[:3], y, lse, *node.inputs[3:]], node.attrs
    )
    # The mask operand is not trained: the pass refuses a mask that depends on a weight.
    return [*grads.outputs, *([None] * (len(node.inputs) - 3))]


@register(
    "attention_lse",
    arity=(3, 4),
    attrs=ATTENTION_ATTRS,
    infer=_infer_attention_lse,
    flops=_attention_flops,
    decompose=_decompose_attention_lse,
    num_outputs=2,
    category="fused",
    vjp=_attention_lse_vjp,
    elide=ATTENTION_ELIDE,
)
def attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    **attrs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention`, and the log-sum-exp of each query's scores, [batch, heads, q_seq].

    The autodiff pass puts it in place of `attention` in training graphs: the backward
    (`attention_grad`) recomputes the weights as exp(scores - lse), as FlashAttention does, so
    only this [batch, heads, seq] vector is kept between forward and backward. A query with
    every key masked has lse = +inf, so the recomputed weights are its zeros.
    """
    lse = torch.logsumexp(attention_scores(q, k, mask, **attrs), dim=-1)
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))
    return attention(q, k, v, mask, **attrs), lse


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
    return _decompose_attention(g, [q, k, v], get_op("attention").complete_attrs(attrs))


def _qkv_attention_vjp(g, node, cotangents):
    """Split the node into `linear`, three slices and `attention_lse` in the forward, then chain
    their VJPs: the fused kernel does not output q, k, v, which the backward needs anyway."""
    with g.inserting_before(node, node.meta):
        qkv = g.call("linear", *node.inputs)
        e = qkv.shape[-1] // 3
        thirds = [g.call("slice", qkv, axis=2, start=i * e, end=(i + 1) * e) for i in range(3)]
    forward = replace_forward(g, node, "attention_lse", thirds)
    dq, dk, dv = _attention_lse_vjp(g, forward, [*cotangents, None])
    return _linear_vjp(g, qkv.producer, [g.call("concat", dq, dk, dv, axis=2)])


@register(
    "qkv_attention",
    arity=(2, 3),
    # q, k and v are thirds of one projection: every head has its own keys; no window or ALiBi
    attrs={"num_heads": REQUIRED, "causal": False, "scale": REQUIRED},
    infer=_infer_qkv_attention,
    flops=_qkv_attention_flops,
    decompose=_decompose_qkv_attention,
    category="fused",
    vjp=_qkv_attention_vjp,
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
    attrs = {"num_heads": num_heads, "causal": causal, "scale": scale}
    return attention(q, k, v, **get_op("attention").complete_attrs(attrs))
