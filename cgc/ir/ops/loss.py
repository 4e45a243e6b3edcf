"""Losses: the fused `cross_entropy`, its backward `cross_entropy_grad`, and the primitive forms
that frontends emit for the pieces of a loss (gather, logsumexp, nll_loss).

The IR has no gather: picking x[i, t_i] is a one-hot `eq(t, iota)` (iota a parameter holding
0 … V-1), a `where` selecting x on it, and a `reduce_sum` over the class axis. Every backend that
runs primitives therefore runs a loss, and `fuse-cross-entropy` folds these forms back into one
`cross_entropy`, whose backends compute it without a [N, V] one-hot.

Targets lie in [0, V) or equal ignore_index. torch raises on any other target; the forms here
give such targets no meaning either (the one-hot of an out-of-range target is all false).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cgc.errors import IRError
from cgc.ir.ops.registry import register
from cgc.ir.types import TORCH_DTYPES, TensorType

REDUCTIONS = ("mean", "sum")
INDEX_DTYPES = ("i64", "i32")


def zero(g, dtype: str):
    """A scalar 0 of `dtype` (False for bool)."""
    if dtype == "bool":
        return g.constant(False, dtype)
    return g.constant(0.0 if TensorType((), dtype).is_float else 0, dtype)


# -- primitive forms ----------------------------------------------------------------------------


def iota(g, size: int, dtype: str = "i64"):
    """The parameter [0, 1, …, size-1] (`iota_<size>`), shared by every one-hot of that size."""
    name = f"iota_{size}" if dtype == "i64" else f"iota_{size}_{dtype}"
    type = TensorType((size,), dtype)
    existing = g.params.get(name)
    if existing is not None and existing.type == type and name in g.weights:
        return existing
    data = torch.arange(size, dtype=TORCH_DTYPES[dtype])
    return g.add_param(g.fresh_name(name), type, data)


def one_hot(g, index, size: int, axis: int):
    """eq(index, iota): true where the position along `axis` equals the index (size 1 there)."""
    rank = index.type.rank
    axis %= rank
    ids = iota(g, size, index.dtype)
    if axis != rank - 1:
        ids = g.call("reshape", ids, shape=[size] + [1] * (rank - 1 - axis))
    return g.call("eq", index, ids)


def pick(g, x, index, axis: int):
    """x at `index` along `axis`, keeping that axis: `index` has x's shape with 1 at `axis`."""
    axis %= x.type.rank
    hot = one_hot(g, index, x.shape[axis], axis)
    selected = g.call("where", hot, x, zero(g, x.dtype))
    return g.call("reduce_sum", selected, axes=[axis], keepdim=True)


def gather(g, x, axis: int, index):
    """torch.gather / ONNX GatherElements: out[…i…] = x[…index[…i…]…] along `axis`.

    `index` has x's rank and, off `axis`, sizes no larger than x's (x is sliced to them). One
    index per slice is a `pick`; k of them compare a [.., k, 1, ..] index with the class axis
    moved one place right, then sum that axis away.
    """
    rank = x.type.rank
    axis %= rank
    for d in range(rank):
        if d != axis and index.shape[d] != x.shape[d]:
            x = g.call("slice", x, axis=d, start=0, end=index.shape[d])
    k = index.shape[axis]
    if k == 1:
        return pick(g, x, index, axis)
    wide = index.shape[: axis + 1] + (1,) + index.shape[axis + 1 :]
    hot = one_hot(g, g.call("reshape", index, shape=list(wide)), x.shape[axis], axis + 1)
    spread = x.shape[:axis] + (1,) + x.shape[axis:]
    values = g.call("reshape", x, shape=list(spread))
    selected = g.call("where", hot, values, zero(g, x.dtype))
    return g.call("reduce_sum", selected, axes=[axis + 1], keepdim=False)


def logsumexp(g, x, axes: Sequence[int], keepdim: bool):
    """log(Σ exp(x)) over `axes`, shifted by the maximum (by 0 where it is ±inf, as torch does)."""
    axes = sorted(a % x.type.rank for a in axes)
    m = g.call("reduce_max", x, axes=axes, keepdim=True)
    inf = g.call("eq", g.call("abs", m), g.constant(float("inf"), x.dtype))
    shift = g.call("where", inf, zero(g, x.dtype), m)
    total = g.call("reduce_sum", g.call("exp", g.call("sub", x, shift)), axes=axes, keepdim=True)
    lse = g.call("add", g.call("log", total), shift)
    if keepdim:
        return lse
    return g.call("reshape", lse, shape=[d for i, d in enumerate(x.shape) if i not in axes])


def classes_last(g, x, target):
    """torch's loss layouts as rows of classes: [C] with a 0-d target becomes [1, C] and [1];
    [N, C, d1, …] with [N, d1, …] becomes [N, d1, …, C] (the class axis moved last)."""
    if x.type.rank == 1:
        return g.call("reshape", x, shape=[1, x.shape[0]]), g.call("reshape", target, shape=[1])
    if x.type.rank > 2:
        perm = [0, *range(2, x.type.rank), 1]
        x = g.call("transpose", x, perm=perm)
    return x, target


def count(g, valid, dtype: str):
    """How many elements of the bool `valid` are true, as a 0-d `dtype` (summed as i64)."""
    axes = list(range(valid.type.rank))
    total = g.call("reduce_sum", g.call("cast", valid, dtype="i64"), axes=axes, keepdim=False)
    return g.call("cast", total, dtype=dtype)


def nll_loss(g, logp, target, *, ignore_index: int | None, reduction: str):
    """Negative log-likelihood of log-probabilities [..., C] at integer `target` [...].

    reduction "none" gives the per-row losses (0 where target == ignore_index), "sum" their
    sum and "mean" the sum over the count of rows that are not ignored. With `ignore_index`
    None no row is ignored, and "mean" divides by the number of rows.
    """
    rows = target.shape
    index = g.call("reshape", target, shape=[*rows, 1])
    picked = g.call("reshape", pick(g, logp, index, axis=-1), shape=list(rows))
    losses = g.call("neg", picked)
    valid = None
    if ignore_index is not None:
        valid = g.call("ne", target, g.constant(ignore_index, target.dtype))
        losses = g.call("where", valid, losses, zero(g, logp.dtype))
    axes = list(range(len(rows)))
    if reduction == "none":
        return losses
    if reduction == "sum":
        return g.call("reduce_sum", losses, axes=axes, keepdim=False)
    if valid is None:
        return g.call("reduce_mean", losses, axes=axes, keepdim=False)
    total = g.call("reduce_sum", losses, axes=axes, keepdim=False)
    return g.call("div", total, count(g, valid, logp.dtype))


# -- cross_entropy ------------------------------------------------------------------------------


def _check_loss(op: str, ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> None:
    logits, targets = ins[0], ins[1]
    if logits.rank != 2 or not logits.is_float:
        raise IRError(f"{op}: logits must be a float [N, V] tensor, got {logits}")
    if targets.shape != logits.shape[:1] or targets.dtype not in INDEX_DTYPES:
        raise IRError(f"{op}: targets must be i64 or i32 [{logits.shape[0]}], got {targets}")
    if attrs["reduction"] not in REDUCTIONS:
        raise IRError(f"{op}: reduction must be 'mean' or 'sum', got {attrs['reduction']!r}")
    if not isinstance(attrs["ignore_index"], int) or isinstance(attrs["ignore_index"], bool):
        raise IRError(f"{op}: ignore_index must be an integer, got {attrs['ignore_index']!r}")


def _infer_cross_entropy(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _check_loss("cross_entropy", ins, attrs)
    return [TensorType((), ins[0].dtype)]


def _cross_entropy_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    n, v = ins[0].shape
    return 4 * n * v + 3 * n  # max, shift, exp, sum per logit; log, pick and sum per row


def _decompose_cross_entropy(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    logits, targets = ins
    logp = g.call("log_softmax", logits, axis=-1)
    return [nll_loss(g, logp, targets, **attrs)]


def _vjp_cross_entropy(g, node, out_grads: Sequence) -> list:
    (dloss,) = out_grads
    if dloss is None:
        return [None, None]
    logits, targets = node.inputs
    return [g.call("cross_entropy_grad", logits, targets, dloss, **node.attrs), None]


LOSS_ATTRS = {"ignore_index": -100, "reduction": "mean"}


@register(
    "cross_entropy",
    arity=2,
    attrs=LOSS_ATTRS,
    infer=_infer_cross_entropy,
    flops=_cross_entropy_flops,
    decompose=_decompose_cross_entropy,
    category="fused",
    vjp=_vjp_cross_entropy,
)
def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int, reduction: str
) -> torch.Tensor:
    """Softmax cross-entropy of [N, V] logits at [N] class indices, as a 0-d tensor.

    "mean" averages over the targets that are not ignore_index (NaN when every one is, as in
    torch); "sum" adds them up (0 when every one is ignored).
    """
    return F.cross_entropy(logits, targets.long(), ignore_index=ignore_index, reduction=reduction)


# -- cross_entropy_grad -------------------------------------------------------------------------


def _infer_cross_entropy_grad(
    ins: Sequence[TensorType], attrs: Mapping[str, Any]
) -> list[TensorType]:
    _check_loss("cross_entropy_grad", ins, attrs)
    if ins[2] != TensorType((), ins[0].dtype):
        raise IRError(f"cross_entropy_grad: dloss must be a 0-d {ins[0].dtype}, got {ins[2]}")
    return [ins[0]]


def _cross_entropy_grad_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs) -> int:
    n, v = ins[0].shape
    return 6 * n * v + 2 * n  # softmax (4), subtract the one-hot and scale per logit


def _decompose_cross_entropy_grad(g, ins: Sequence, attrs: Mapping[str, Any]) -> list:
    logits, targets, dloss = ins
    n, v = logits.shape
    probs = g.call("softmax", logits, axis=-1)
    hot = one_hot(g, g.call("reshape", targets, shape=[n, 1]), v, axis=-1)
    diff = g.call("sub", probs, g.call("cast", hot, dtype=logits.dtype))
    valid = g.call("ne", targets, g.constant(attrs["ignore_index"], targets.dtype))
    scale = dloss
    if attrs["reduction"] == "mean":
        scale = g.call("div", dloss, count(g, valid, logits.dtype))
    rows = g.call("where", valid, scale, zero(g, logits.dtype))
    return [g.call("mul", diff, g.call("reshape", rows, shape=[n, 1]))]


@register(
    "cross_entropy_grad",
    arity=3,
    attrs=LOSS_ATTRS,
    infer=_infer_cross_entropy_grad,
    flops=_cross_entropy_grad_flops,
    decompose=_decompose_cross_entropy_grad,
    category="fused",
    differentiable=False,
)
def cross_entropy_grad(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dloss: torch.Tensor,
    *,
    ignore_index: int,
    reduction: str,
) -> torch.Tensor:
    """The gradient of cross_entropy with respect to its logits, given the loss's cotangent.

    (softmax(logits) - one_hot(target)) · dloss / count on every row that counts ("mean";
    dloss alone for "sum"), and 0 on ignored rows: all zeros when every row is ignored, as
    torch autograd gives.
    """
    valid = targets != ignore_index
    probs = torch.softmax(logits, dim=-1)
    hot = F.one_hot(torch.where(valid, targets, 0).long(), logits.shape[-1]).to(logits.dtype)
    scale = dloss
    if reduction == "mean":
        scale = dloss / valid.sum().to(logits.dtype)
    rows = torch.where(valid, scale, torch.zeros((), dtype=logits.dtype))
    return (probs - hot) * rows[:, None]
