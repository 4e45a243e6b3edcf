"""The ATen -> IR table: how each core ATen op becomes cgc IR primitives.

A converter gets the importer (`cx`, a `cgc.frontends.context.ConversionContext`) and the FX node's
arguments as torch.export recorded them: tensors are FX nodes read through `cx.value` or
`cx.operand(arg, dtype)` (which casts, and turns Python scalars into `constant` nodes). It
returns the node's IR value or, for a multi-output op, one entry per output (a thunk emitting it
on demand, or None when cgc cannot produce it). Casts are explicit in the IR, so converters
compute in the dtype torch reports for the result (`cx.out`). Fused ops (layer norm, GELU) are
emitted through their registry decomposition, so the frontend produces primitives only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import accumulate
from math import prod
from typing import Any

import torch

from cgc.frontends.context import ConversionContext
from cgc.ir import Value, get_op
from cgc.ir.ops import loss
from cgc.ir.ops.random import add_dropout

aten = torch.ops.aten
Converter = Callable[..., Any]
CONVERTERS: dict[torch._ops.OpOverload, Converter] = {}


def _converts(*ops: torch._ops.OpOverload) -> Callable[[Converter], Converter]:
    def wrap(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn

    return wrap


def _decomposed(cx: ConversionContext, op: str, inputs: Sequence[Value], **attrs: Any) -> Value:
    """Emit fused `op` as its registry decomposition."""
    opdef = get_op(op)
    (result,) = opdef.decompose(cx.g, list(inputs), opdef.complete_attrs(attrs))
    return result


def _axes(dim: int | Sequence[int] | None, rank: int) -> list[int]:
    """Reduction axes as recorded; None or [] means every axis, as in torch."""
    if dim is None or (not isinstance(dim, int) and len(dim) == 0):
        return list(range(rank))
    return [dim] if isinstance(dim, int) else list(dim)


# -- elementwise --------------------------------------------------------------------------------


def _arith(op: str) -> Converter:
    def convert(cx: ConversionContext, a: Any, b: Any, *, alpha: Any = 1) -> Value:
        dtype = cx.out.dtype
        x, y = cx.operand(a, dtype), cx.operand(b, dtype)
        if alpha != 1:
            y = cx.g.call("mul", y, cx.scalar(alpha, dtype))
        return cx.g.call(op, x, y)

    return convert


def _compare(op: str) -> Converter:
    def convert(cx: ConversionContext, a: Any, b: Any) -> Value:
        dtype = cx.result_dtype(a, b)
        return cx.g.call(op, cx.operand(a, dtype), cx.operand(b, dtype))

    return convert


def _logical(op: str) -> Converter:
    def convert(cx: ConversionContext, a: Any, b: Any) -> Value:
        if cx.out.dtype != "bool":
            raise cx.unsupported("bitwise ops are supported on bool tensors only")
        return cx.g.call(op, cx.operand(a, "bool"), cx.operand(b, "bool"))

    return convert


def _unary(op: str) -> Converter:
    def convert(cx: ConversionContext, x: Any) -> Value:
        return cx.g.call(op, cx.operand(x, cx.out.dtype))

    return convert


for _op, _overloads in {
    "add": (aten.add.Tensor, aten.add.Scalar),
    "sub": (aten.sub.Tensor, aten.sub.Scalar),
    "mul": (aten.mul.Tensor, aten.mul.Scalar),
    "div": (aten.div.Tensor, aten.div.Scalar),
    "pow": (aten.pow.Tensor_Tensor, aten.pow.Tensor_Scalar, aten.pow.Scalar),
    "maximum": (aten.maximum.default,),
    "minimum": (aten.minimum.default,),
}.items():
    _converts(*_overloads)(_arith(_op))

for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    _converts(getattr(aten, _op).Tensor, getattr(aten, _op).Scalar)(_compare(_op))

_converts(
    aten.logical_and.default,
    aten.bitwise_and.Tensor,
    aten.bitwise_and.Scalar,
    aten.__and__.Tensor,
)(_logical("logical_and"))
_converts(aten.logical_or.default, aten.bitwise_or.Tensor, aten.bitwise_or.Scalar)(
    _logical("logical_or")
)
_converts(aten.logical_xor.default)(_logical("ne"))  # a xor b == (a != b) on bools

for _op in (
    "neg",
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "tanh",
    "erf",
    "sigmoid",
    "relu",
    "silu",
    "cos",
    "sin",
):
    _converts(getattr(aten, _op).default)(_unary(_op))


@_converts(aten.div.Tensor_mode)
def _div_mode(cx: ConversionContext, a: Any, b: Any, *, rounding_mode: str | None = None) -> Value:
    if rounding_mode is not None:
        raise cx.unsupported(f"rounding_mode={rounding_mode!r}")
    return _arith("div")(cx, a, b)


@_converts(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(cx: ConversionContext, a: Any, b: Any, alpha: Any = 1) -> Value:
    dtype = cx.out.dtype
    x = cx.operand(a, dtype)
    if alpha != 1:
        x = cx.g.call("mul", x, cx.scalar(alpha, dtype))
    return cx.g.call("sub", cx.operand(b, dtype), x)


@_converts(aten.logical_not.default, aten.bitwise_not.default)
def _logical_not(cx: ConversionContext, x: Any) -> Value:
    if cx.out.dtype != "bool":
        raise cx.unsupported("bitwise not is supported on bool tensors only")
    return cx.g.call("logical_not", cx.operand(x, "bool"))


@_converts(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(cx: ConversionContext, cond: Any, a: Any, b: Any) -> Value:
    dtype = cx.out.dtype
    return cx.g.call("where", cx.operand(cond, "bool"), cx.operand(a, dtype), cx.operand(b, dtype))


@_converts(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(cx: ConversionContext, x: Any, mask: Any, value: Any) -> Value:
    return _where(cx, mask, value, x)


@_converts(aten.clamp.default, aten.clamp.Tensor)
def _clamp(cx: ConversionContext, x: Any, min: Any = None, max: Any = None) -> Value:
    dtype = cx.out.dtype
    y = cx.operand(x, dtype)
    if min is not None:
        y = cx.g.call("maximum", y, cx.operand(min, dtype))
    if max is not None:
        y = cx.g.call("minimum", y, cx.operand(max, dtype))
    return y


@_converts(aten.clamp_min.default)
def _clamp_min(cx: ConversionContext, x: Any, min: Any) -> Value:
    return _clamp(cx, x, min=min)


@_converts(aten.clamp_max.default)
def _clamp_max(cx: ConversionContext, x: Any, max: Any) -> Value:
    return _clamp(cx, x, max=max)


@_converts(aten._to_copy.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout)
def _to_copy(cx: ConversionContext, x: Any, *where: Any, **layout: Any) -> Value:
    """A cast when the dtype changes; device, layout and memory format mean nothing here."""
    return cx.operand(x, cx.out.dtype)


@_converts(
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.contiguous.default,
    aten.lift_fresh_copy.default,
    aten.detach_.default,
)
def _identity(cx: ConversionContext, x: Any, **memory_format: Any) -> Value:
    """Copies and aliases: values are immutable in the IR."""
    return cx.value(x)


# -- linear algebra -----------------------------------------------------------------------------


@_converts(aten.mm.default, aten.bmm.default)
def _mm(cx: ConversionContext, a: Any, b: Any) -> Value:
    dtype = cx.out.dtype
    return cx.g.call("matmul", cx.operand(a, dtype), cx.operand(b, dtype))


@_converts(aten.matmul.default)
def _matmul(cx: ConversionContext, a: Any, b: Any) -> Value:
    """torch.matmul: 1-D operands become matrices for the product, then lose that axis."""
    dtype = cx.out.dtype
    x, y = cx.operand(a, dtype), cx.operand(b, dtype)
    if x.type.rank == 1:
        x = cx.g.call("reshape", x, shape=[1, x.shape[0]])
    if y.type.rank == 1:
        y = cx.g.call("reshape", y, shape=[y.shape[0], 1])
    return _reshape_to(cx, cx.g.call("matmul", x, y), cx.out.shape)


@_converts(aten.baddbmm.default)
def _baddbmm(
    cx: ConversionContext, bias: Any, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1
) -> Value:
    """beta·bias + alpha·(a @ b) on batches (BLOOM adds its ALiBi bias to the scores so)."""
    return _addmm(cx, bias, a, b, beta=beta, alpha=alpha)


@_converts(aten.addmm.default)
def _addmm(
    cx: ConversionContext, bias: Any, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1
) -> Value:
    """beta·bias + alpha·(a @ b), as matmul then add so the linear fusion sees it."""
    dtype = cx.out.dtype
    y = cx.g.call("matmul", cx.operand(a, dtype), cx.operand(b, dtype))
    if alpha != 1:
        y = cx.g.call("mul", y, cx.scalar(alpha, dtype))
    if beta == 0:
        return y
    c = cx.operand(bias, dtype)
    if beta != 1:
        c = cx.g.call("mul", c, cx.scalar(beta, dtype))
    return cx.g.call("add", y, c)


# -- data movement ------------------------------------------------------------------------------


def _reshape_to(cx: ConversionContext, value: Value, shape: tuple[int, ...]) -> Value:
    return value if value.shape == shape else cx.g.call("reshape", value, shape=list(shape))


def _transpose(cx: ConversionContext, value: Value, perm: list[int]) -> Value:
    if perm == list(range(len(perm))):
        return value
    return cx.g.call("transpose", value, perm=perm)


def _slice_axis(
    cx: ConversionContext, value: Value, axis: int, start: int, end: int, step: int = 1
):
    if (start, end, step) == (0, value.shape[axis], 1):
        return value
    return cx.g.call("slice", value, axis=axis, start=start, end=end, step=step)


@_converts(
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
    aten.flatten.using_ints,
    aten.unflatten.int,
)
def _reshape(cx: ConversionContext, x: Any, *shape_args: Any) -> Value:
    """Every view that keeps element order is a reshape to the static result shape."""
    return _reshape_to(cx, cx.value(x), cx.out.shape)


@_converts(aten.permute.default)
def _permute(cx: ConversionContext, x: Any, dims: Sequence[int]) -> Value:
    value = cx.value(x)
    return _transpose(cx, value, [d % value.type.rank for d in dims])


@_converts(aten.t.default)
def _t(cx: ConversionContext, x: Any) -> Value:
    value = cx.value(x)
    return _transpose(cx, value, list(range(value.type.rank))[::-1])


@_converts(aten.numpy_T.default)
def _numpy_t(cx: ConversionContext, x: Any) -> Value:
    return _t(cx, x)


@_converts(aten.transpose.int)
def _transpose_int(cx: ConversionContext, x: Any, dim0: int, dim1: int) -> Value:
    value = cx.value(x)
    perm = list(range(value.type.rank))
    a, b = dim0 % len(perm), dim1 % len(perm)
    perm[a], perm[b] = perm[b], perm[a]
    return _transpose(cx, value, perm)


@_converts(aten.expand.default)
def _expand(cx: ConversionContext, x: Any, size: Sequence[int], *, implicit: bool = False) -> Value:
    value = cx.value(x)
    if value.shape == cx.out.shape:
        return value
    return cx.g.call("expand", value, shape=list(cx.out.shape))


@_converts(aten.slice.Tensor)
def _slice(
    cx: ConversionContext,
    x: Any,
    dim: int = 0,
    start: int | None = None,
    end: int | None = None,
    step=1,
) -> Value:
    """Negative and out-of-range bounds are clamped to the static size, as torch does."""
    value = cx.value(x)
    axis = dim % value.type.rank
    start, end, _ = slice(start, end, step).indices(value.shape[axis])
    return _slice_axis(cx, value, axis, start, max(start, end), step)


@_converts(aten.select.int)
def _select(cx: ConversionContext, x: Any, dim: int, index: int) -> Value:
    value = cx.value(x)
    axis = dim % value.type.rank
    index %= value.shape[axis]
    return _reshape_to(cx, _slice_axis(cx, value, axis, index, index + 1), cx.out.shape)


def _chunks(cx: ConversionContext, x: Any, dim: int, sizes: Sequence[int]) -> tuple:
    value = cx.value(x)
    axis = dim % value.type.rank
    starts = [0, *accumulate(sizes)]
    return tuple(
        lambda start=start, size=size: _slice_axis(cx, value, axis, start, start + size)
        for start, size in zip(starts, sizes, strict=False)
    )


@_converts(aten.split_with_sizes.default)
def _split_with_sizes(
    cx: ConversionContext, x: Any, split_sizes: Sequence[int], dim: int = 0
) -> tuple:
    return _chunks(cx, x, dim, split_sizes)


@_converts(aten.split.Tensor)
def _split(cx: ConversionContext, x: Any, split_size: int, dim: int = 0) -> tuple:
    total = cx.value(x).shape[dim]
    return _chunks(cx, x, dim, [min(split_size, total - s) for s in range(0, total, split_size)])


@_converts(aten.chunk.default)
def _chunk(cx: ConversionContext, x: Any, chunks: int, dim: int = 0) -> tuple:
    """torch.chunk: pieces of ceil(size / chunks), the last one smaller, maybe fewer pieces."""
    total = cx.value(x).shape[dim]
    size = -(-total // chunks)
    return _chunks(cx, x, dim, [min(size, total - s) for s in range(0, total, size)])


@_converts(aten.unbind.int)
def _unbind(cx: ConversionContext, x: Any, dim: int = 0) -> tuple:
    value = cx.value(x)
    axis = dim % value.type.rank

    def item(index: int) -> Value:
        return _reshape_to(cx, _slice_axis(cx, value, axis, index, index + 1), cx.out.shape)

    return tuple(lambda i=i: item(i) for i in range(value.shape[axis]))


@_converts(aten.repeat_interleave.self_int)
def _repeat_interleave(
    cx: ConversionContext, x: Any, repeats: int, dim: int | None = None, *, output_size: Any = None
) -> Value:
    """Each slice along `dim` repeated `repeats` times in place (GPT-J's sin/cos tables, shared
    key-value heads): a new axis after `dim`, expanded, then merged into it."""
    value = cx.value(x)
    if dim is None:
        value, dim = _reshape_to(cx, value, (value.type.numel,)), 0
    axis = dim % value.type.rank
    shape = list(value.shape)
    grown = cx.g.call("reshape", value, shape=[*shape[: axis + 1], 1, *shape[axis + 1 :]])
    grown = cx.g.call("expand", grown, shape=[*shape[: axis + 1], repeats, *shape[axis + 1 :]])
    return _reshape_to(cx, grown, cx.out.shape)


@_converts(aten.stack.default)
def _stack(cx: ConversionContext, tensors: Sequence[Any], dim: int = 0) -> Value:
    """Each tensor gains a unit axis at `dim`, then they are concatenated along it."""
    dtype, rank = cx.out.dtype, cx.out.rank
    axis = dim % rank
    values = []
    for t in tensors:
        v = cx.operand(t, dtype)
        values.append(_reshape_to(cx, v, (*v.shape[:axis], 1, *v.shape[axis:])))
    return values[0] if len(values) == 1 else cx.g.call("concat", *values, axis=axis)


@_converts(aten.cat.default)
def _cat(cx: ConversionContext, tensors: Sequence[Any], dim: int = 0) -> Value:
    dtype = cx.out.dtype
    values = [cx.operand(t, dtype) for t in tensors]
    return values[0] if len(values) == 1 else cx.g.call("concat", *values, axis=dim)


def _filled(cx: ConversionContext, value: Any, like: Value, axis: int, width: int) -> Value | None:
    """`value` in the shape of `like` but `width` wide on `axis`; None when width <= 0."""
    if width <= 0:
        return None
    shape = [width if a == axis else d for a, d in enumerate(like.shape)]
    return cx.g.call("expand", cx.scalar(value, like.dtype), shape=shape)


@_converts(aten.constant_pad_nd.default)
def _constant_pad_nd(cx: ConversionContext, x: Any, pad: Sequence[int], value: Any = 0) -> Value:
    """Pads (a pair per axis, the last axis first) as concats of filled blocks; negatives crop."""
    out = cx.value(x)
    for i in range(len(pad) // 2):
        axis = out.type.rank - 1 - i
        before, after = pad[2 * i], pad[2 * i + 1]
        out = _slice_axis(cx, out, axis, max(-before, 0), out.shape[axis] - max(-after, 0))
        blocks = [_filled(cx, value, out, axis, before), out, _filled(cx, value, out, axis, after)]
        parts = [b for b in blocks if b is not None]
        out = parts[0] if len(parts) == 1 else cx.g.call("concat", *parts, axis=axis)
    return out


@_converts(aten.pad.default)
def _pad(
    cx: ConversionContext, x: Any, pad: Sequence[int], mode: str = "constant", value=None
) -> Value:
    if mode != "constant":
        raise cx.unsupported(f"{mode} padding; cgc imports constant padding only")
    return _constant_pad_nd(cx, x, pad, 0 if value is None else value)


@_converts(aten.embedding.default)
def _embedding(
    cx: ConversionContext,
    weight: Any,
    indices: Any,
    padding_idx: int = -1,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Value:
    """Table lookup. padding_idx (no gradient into that row) is kept for autodiff; a sparse
    gradient is the same sum stored densely."""
    if scale_grad_by_freq:
        raise cx.unsupported("embedding with scale_grad_by_freq (a gradient scaled by counts)")
    ids = cx.value(indices)
    if ids.dtype not in ("i64", "i32"):
        ids = cx.g.call("cast", ids, dtype="i64")
    table = cx.value(weight)
    if padding_idx < 0:
        return cx.g.call("embedding", table, ids)
    return cx.g.call("embedding", table, ids, padding_idx=padding_idx)


@_converts(aten.index.Tensor)
def _index(cx: ConversionContext, x: Any, indices: Sequence[Any]) -> Value:
    """x[i0, i1, ...] with integer index tensors (None is a full slice) as one row gather.

    The indexed axes move to the front and flatten into the rows of a [rows, rest] table, the
    broadcast index tensors combine into one row index, and `embedding` gathers those rows. As
    in torch, the broadcast index axes take the place of the indexed axes when these are
    adjacent, and lead the result otherwise. Index tensors known at import fold into one
    constant; a gather of every row in order (Hugging Face's mask builders index with aranges)
    is a reshape.
    """
    value = cx.value(x)
    axes = [axis for axis, index in enumerate(indices) if index is not None]
    types = [cx.type_of(indices[axis]) for axis in axes]
    if any(t.dtype in ("bool", "u8") for t in types):
        raise cx.unsupported("boolean mask indices; index with integer tensors")
    rest = [axis for axis in range(value.type.rank) if axis not in axes]
    dims = [value.shape[axis] for axis in axes]
    batch = tuple(torch.broadcast_shapes(*(t.shape for t in types)))
    moved = _transpose(cx, value, axes + rest)
    count = prod(dims)
    index_args = [indices[axis] for axis in axes]
    rows = _folded_rows(cx, index_args, dims, batch)
    if rows is not None and torch.equal(rows.flatten(), torch.arange(count)):
        gathered = moved  # every row, in order
    else:
        ids = _row_index(cx, index_args, dims, batch) if rows is None else cx.tensor(rows)
        table = _reshape_to(cx, moved, (count, moved.type.numel // count))
        gathered = cx.g.call("embedding", table, ids)
    y = _reshape_to(cx, gathered, (*batch, *(value.shape[axis] for axis in rest)))
    front = axes[0] if axes == list(range(axes[0], axes[-1] + 1)) else 0
    k = len(batch)
    return _transpose(cx, y, [*range(k, k + front), *range(k), *range(k + front, y.type.rank)])


def _folded_rows(
    cx: ConversionContext, indices: Sequence[Any], dims: list[int], batch: tuple
) -> torch.Tensor | None:
    """The row index when every index tensor is known at import, else None."""
    folded = [cx.folded.get(index) for index in indices]
    if not all(isinstance(t, torch.Tensor) for t in folded):
        return None
    rows = torch.zeros((), dtype=torch.long)
    for t, dim in zip(folded, dims, strict=True):
        rows = rows * dim + t + dim * (t < 0)  # negative indices count from the end
    return rows.expand(batch).contiguous()


def _row_index(
    cx: ConversionContext, indices: Sequence[Any], dims: list[int], batch: tuple
) -> Value:
    """The row index computed in the graph, from index tensors that depend on the inputs."""
    g, ids = cx.g, None
    for index, dim in zip(indices, dims, strict=True):
        i = cx.operand(index, "i64")
        negative = g.call("lt", i, cx.scalar(0, "i64"))  # counts from the end
        i = g.call("where", negative, g.call("add", i, cx.scalar(dim, "i64")), i)
        ids = i if ids is None else g.call("add", g.call("mul", ids, cx.scalar(dim, "i64")), i)
    return ids if ids.shape == batch else g.call("expand", ids, shape=list(batch))


# -- reductions and normalisation ---------------------------------------------------------------


def _reduce(op: str) -> Converter:
    def convert(
        cx: ConversionContext, x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None
    ) -> Value:
        value = cx.operand(x, cx.out.dtype)
        return cx.g.call(op, value, axes=_axes(dim, value.type.rank), keepdim=keepdim)

    return convert


@_converts(aten.cumsum.default)
def _cumsum(cx: ConversionContext, x: Any, dim: int, *, dtype: Any = None) -> Value:
    return cx.g.call("cumsum", cx.operand(x, cx.out.dtype), axis=dim % cx.out.rank)


_converts(aten.sum.dim_IntList, aten.sum.default)(_reduce("reduce_sum"))
_converts(aten.mean.dim, aten.mean.default)(_reduce("reduce_mean"))
_converts(aten.amax.default)(_reduce("reduce_max"))


def _correction(cx: ConversionContext, correction: Any) -> int:
    if correction is None:
        return 1
    if correction != int(correction):
        raise cx.unsupported(f"a fractional variance correction ({correction})")
    return int(correction)


@_converts(aten.var.correction)
def _var(cx: ConversionContext, x: Any, dim: Any = None, *, correction: Any = None, keepdim=False):
    value = cx.operand(x, cx.out.dtype)
    correction = _correction(cx, correction)
    axes = _axes(dim, value.type.rank)
    return cx.g.call("var", value, axes=axes, keepdim=keepdim, correction=correction)


@_converts(aten.var_mean.correction)
def _var_mean(
    cx: ConversionContext, x: Any, dim: Any = None, *, correction: Any = None, keepdim=False
):
    value = cx.value(x)
    axes = _axes(dim, value.type.rank)
    correction = _correction(cx, correction)
    return (
        lambda: cx.g.call("var", value, axes=axes, keepdim=keepdim, correction=correction),
        lambda: cx.g.call("reduce_mean", value, axes=axes, keepdim=keepdim),
    )


# -- losses -------------------------------------------------------------------------------------

_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}  # torch's Reduction enum


def _reduction(
    cx: ConversionContext, weight: Any, reduction: int, label_smoothing: float = 0.0
) -> str:
    """The reduction's name, after refusing what cgc's losses do not cover."""
    if weight is not None:
        raise cx.unsupported("class weights; cgc imports losses with weight=None only")
    if label_smoothing:
        raise cx.unsupported(f"label_smoothing={label_smoothing}; cgc imports 0 only")
    return _REDUCTIONS[reduction]


def _class_indices(cx: ConversionContext, target: Any) -> Value:
    t = cx.value(target)
    if t.dtype not in loss.INDEX_DTYPES:
        raise cx.unsupported(f"{t.dtype} targets; cgc imports class-index (integer) targets only")
    return t


@_converts(aten.cross_entropy_loss.default)
def _cross_entropy_loss(
    cx: ConversionContext,
    x: Any,
    target: Any,
    weight: Any = None,
    reduction: int = 1,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Value:
    """F.cross_entropy: log_softmax over the class axis, then nll_loss (fuse-cross-entropy
    makes them one `cross_entropy` again)."""
    how = _reduction(cx, weight, reduction, label_smoothing)
    logits, rows = loss.classes_last(cx.g, cx.value(x), _class_indices(cx, target))
    logp = cx.g.call("log_softmax", logits, axis=-1)
    out = loss.nll_loss(cx.g, logp, rows, ignore_index=ignore_index, reduction=how)
    return _reshape_to(cx, out, cx.out.shape)


@_converts(aten.nll_loss.default, aten.nll_loss_nd.default)
def _nll_loss(
    cx: ConversionContext,
    x: Any,
    target: Any,
    weight: Any = None,
    reduction: int = 1,
    ignore_index: int = -100,
) -> Value:
    """F.nll_loss on log-probabilities with the class axis 1 (or 0 when unbatched)."""
    how = _reduction(cx, weight, reduction)
    logp, rows = loss.classes_last(cx.g, cx.value(x), _class_indices(cx, target))
    out = loss.nll_loss(cx.g, logp, rows, ignore_index=ignore_index, reduction=how)
    return _reshape_to(cx, out, cx.out.shape)


@_converts(aten.nll_loss_forward.default)
def _nll_loss_forward(
    cx: ConversionContext, x: Any, target: Any, weight: Any, reduction: int, ignore_index: int
) -> tuple:
    """(loss, total weight): only the loss is importable."""
    return (lambda: _nll_loss(cx, x, target, weight, reduction, ignore_index), None)


@_converts(aten.gather.default)
def _gather(
    cx: ConversionContext, x: Any, dim: int, index: Any, *, sparse_grad: bool = False
) -> Value:
    """torch.gather as a one-hot select and sum: the IR has no gather (cgc.ir.ops.loss)."""
    return loss.gather(cx.g, cx.value(x), dim, cx.value(index))


@_converts(aten.take_along_dim.default)
def _take_along_dim(cx: ConversionContext, x: Any, indices: Any, dim: int | None = None) -> Value:
    """torch.take_along_dim: broadcast off `dim`, negative indices counted from the end, gather."""
    g, value, index = cx.g, cx.value(x), cx.value(indices)
    if dim is None:
        value = _reshape_to(cx, value, (value.type.numel,))
        index, dim = _reshape_to(cx, index, (index.type.numel,)), 0
    axis = dim % value.type.rank
    size = value.shape[axis]
    both = torch.broadcast_shapes(
        tuple(1 if i == axis else d for i, d in enumerate(value.shape)),
        tuple(1 if i == axis else d for i, d in enumerate(index.shape)),
    )
    for v in (value, index):
        shape = tuple(v.shape[i] if i == axis else d for i, d in enumerate(both))
        if v.shape != shape:
            expanded = g.call("expand", v, shape=list(shape))
            value, index = (expanded, index) if v is value else (value, expanded)
    negative = g.call("lt", index, cx.scalar(0, index.dtype))
    index = g.call("where", negative, g.call("add", index, cx.scalar(size, index.dtype)), index)
    return loss.gather(g, value, axis, index)


@_converts(aten.logsumexp.default)
def _logsumexp(cx: ConversionContext, x: Any, dim: Any, keepdim: bool = False) -> Value:
    value = cx.operand(x, cx.out.dtype)
    return loss.logsumexp(cx.g, value, _axes(dim, value.type.rank), keepdim)


def _softmax(op: str) -> Converter:
    def convert(
        cx: ConversionContext, x: Any, dim: int, half_to_float_or_dtype: Any = None
    ) -> Value:
        return cx.g.call(op, cx.operand(x, cx.out.dtype), axis=dim)

    return convert


_converts(aten._softmax.default, aten.softmax.int)(_softmax("softmax"))
_converts(aten._log_softmax.default, aten.log_softmax.int)(_softmax("log_softmax"))


@_converts(aten.linear.default)
def _linear(cx: ConversionContext, x: Any, weight: Any, bias: Any = None) -> Value:
    """x @ wᵀ (+ b) as transpose, matmul and add: the form the linear fusion matches."""
    dtype = cx.out.dtype
    w = cx.operand(weight, dtype)
    y = cx.g.call("matmul", cx.operand(x, dtype), _transpose(cx, w, [1, 0]))
    return y if bias is None else cx.g.call("add", y, cx.operand(bias, dtype))


@_converts(aten.layer_norm.default)
def _layer_norm(
    cx: ConversionContext,
    x: Any,
    normalized_shape: Sequence[int],
    weight: Any = None,
    bias: Any = None,
    eps: float = 1e-5,
    cudnn_enable: bool = True,
) -> Value:
    """The normalised output of native_layer_norm (export keeps layer_norm whole)."""
    normalized, _, _ = _native_layer_norm(cx, x, normalized_shape, weight, bias, eps)
    return normalized()


@_converts(aten.dropout.default)
def _dropout(cx: ConversionContext, x: Any, p: float, train: bool) -> Value:
    """Identity in eval mode; in training mode a seeded `dropout` on the graph's %rng_seed."""
    value = cx.value(x)
    return add_dropout(cx.g, value, p) if train and p > 0 else value


@_converts(aten.native_dropout.default)
def _native_dropout(cx: ConversionContext, x: Any, p: float, train: bool | None) -> tuple:
    """(output, keep-mask): only the output is importable (the mask is recomputed, not kept)."""
    return (lambda: _dropout(cx, x, p, train is not False), None)


@_converts(aten.native_layer_norm.default)
def _native_layer_norm(
    cx: ConversionContext,
    x: Any,
    normalized_shape: Sequence[int],
    weight: Any,
    bias: Any,
    eps: float,
) -> tuple:
    """(normalised, mean, rstd); the first through the `layer_norm` decomposition."""
    value = cx.value(x)
    axes = list(range(-len(normalized_shape), 0))
    width = prod(normalized_shape)

    def flat(v: Value) -> Value:
        return _reshape_to(cx, v, v.shape[: v.type.rank - len(axes)] + (width,))

    def normalized() -> Value:
        inputs = [flat(value)]
        if weight is not None:
            inputs.append(flat(cx.value(weight)))
            if bias is not None:
                inputs.append(flat(cx.value(bias)))
        y = _decomposed(cx, "layer_norm", inputs, eps=eps)
        if bias is not None and weight is None:
            y = cx.g.call("add", y, flat(cx.value(bias)))
        return _reshape_to(cx, y, value.shape)

    def mean() -> Value:
        return cx.g.call("reduce_mean", value, axes=axes, keepdim=True)

    def rstd() -> Value:
        var = cx.g.call("var", value, axes=axes, keepdim=True, correction=0)
        return cx.g.call("rsqrt", cx.g.call("add", var, cx.scalar(eps, value.dtype)))

    return normalized, mean, rstd


@_converts(aten.gelu.default)
def _gelu(cx: ConversionContext, x: Any, *, approximate: str = "none") -> Value:
    return _decomposed(cx, "gelu", [cx.value(x)], approximate=approximate)


# -- attention ----------------------------------------------------------------------------------


def _attention(
    cx: ConversionContext,
    query: Any,
    key: Any,
    value: Any,
    mask: Any,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool = False,
) -> Value:
    """softmax(q·kᵀ·scale, masked)·v in the form the attention fusion matches.

    With dropout_p > 0 the weights go through `dropout` before ·v, as in torch's SDPA; that
    form stays unfused (the attention op has no dropout), so it runs as primitives.

    A causal mask is a `where` with a tril parameter (top-left aligned, as torch's is_causal);
    a bool mask keeps scores where true; a float mask is added. As in torch, a query whose
    every key is masked gets zero weights (where(isnan(p), 0, p) after the softmax) rather than
    NaN; the guard is left out when the mask is known and masks no whole row.
    """
    g = cx.g
    dtype = cx.out.dtype
    q, k, v = (cx.operand(t, dtype) for t in (query, key, value))
    if enable_gqa and k.type.rank >= 3 and k.shape[-3] != q.shape[-3]:
        k, v = (_repeat_heads(cx, t, q.shape[-3]) for t in (k, v))
    rank = k.type.rank
    k_t = g.call("transpose", k, perm=[*range(rank - 2), rank - 1, rank - 2])
    scores = g.call("matmul", q, k_t)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = g.call("mul", scores, cx.scalar(scale, dtype))
    if is_causal:
        keep = cx.causal_mask(*scores.shape[-2:])
        scores = g.call("where", keep, scores, cx.scalar(float("-inf"), dtype))
    if mask is not None:
        if cx.type_of(mask).dtype == "bool":
            scores = g.call("where", cx.value(mask), scores, cx.scalar(float("-inf"), dtype))
        else:
            scores = g.call("add", scores, cx.operand(mask, dtype))
    probs = g.call("softmax", scores, axis=-1)
    if mask is not None and _may_mask_a_row(cx, mask):
        probs = g.call("where", g.call("ne", probs, probs), cx.scalar(0.0, dtype), probs)
    if dropout_p:
        probs = add_dropout(g, probs, dropout_p)
    return g.call("matmul", probs, v)


def _may_mask_a_row(cx: ConversionContext, mask: Any) -> bool:
    """Whether an SDPA mask may mask every key of a query (always, unless known at import)."""
    data = cx.folded.get(mask)
    if not isinstance(data, torch.Tensor):
        return True
    masked = ~data if data.dtype == torch.bool else data == float("-inf")
    return bool(masked.all(-1).any())


def _repeat_heads(cx: ConversionContext, x: Value, heads: int) -> Value:
    """Grouped-query attention: each key/value head serves heads/kv_heads query heads."""
    *batch, kv_heads, seq, width = x.shape
    grouped = [*batch, kv_heads, heads // kv_heads, seq, width]
    x = cx.g.call("reshape", x, shape=[*batch, kv_heads, 1, seq, width])
    x = cx.g.call("expand", x, shape=grouped)
    return cx.g.call("reshape", x, shape=[*batch, heads, seq, width])


@_converts(aten._native_multi_head_attention.default)
def _native_multi_head_attention(
    cx: ConversionContext,
    query: Any,
    key: Any,
    value: Any,
    embed_dim: int,
    num_head: int,
    qkv_weight: Any,
    qkv_bias: Any,
    proj_weight: Any,
    proj_bias: Any,
    mask: Any = None,
    need_weights: bool = True,
    average_attn_weights: bool = True,
    mask_type: int | None = None,
) -> tuple:
    """nn.MultiheadAttention's fused fast path (batch first): the packed input projection,
    attention and the output projection; a bool mask is True where a key is masked, [t, s]
    (mask_type 0), [b, s] key padding (1) or [b, h, t, s]. Only the output is importable."""

    def output() -> Value:
        g, dtype = cx.g, cx.out.dtype
        w, b = cx.operand(qkv_weight, dtype), cx.operand(qkv_bias, dtype)
        projected = []
        for i, x in enumerate((query, key, value)):
            part = (i * embed_dim, (i + 1) * embed_dim)
            w_i = _slice_axis(cx, w, 0, *part)
            b_i = _slice_axis(cx, b, 0, *part)
            y = g.call("matmul", cx.operand(x, dtype), _transpose(cx, w_i, [1, 0]))
            projected.append(g.call("add", y, b_i))
        operands = list(projected)
        if mask is not None:
            masked = cx.value(mask)
            if masked.dtype == "bool":
                if mask_type == 1:  # key padding [b, s]
                    masked = _reshape_to(cx, masked, (masked.shape[0], 1, 1, masked.shape[1]))
                inf, zero = cx.scalar(float("-inf"), dtype), cx.scalar(0.0, dtype)
                masked = g.call("where", masked, inf, zero)
            operands.append(masked)
        attrs = {"num_heads": num_head, "scale": 1.0 / math.sqrt(embed_dim // num_head)}
        attended = _decomposed(cx, "attention", operands, **attrs)
        out = g.call("matmul", attended, _transpose(cx, cx.operand(proj_weight, dtype), [1, 0]))
        return g.call("add", out, cx.operand(proj_bias, dtype))

    return output, None


@_converts(aten.scaled_dot_product_attention.default)
def _sdpa(
    cx: ConversionContext,
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Value:
    return _attention(cx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


@_converts(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _sdpa_flash_cpu(
    cx: ConversionContext,
    query: Any,
    key: Any,
    value: Any,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    attn_mask: Any = None,
    scale: float | None = None,
) -> tuple:
    """(output, logsumexp): only the output is importable."""
    return (
        lambda: _attention(cx, query, key, value, attn_mask, dropout_p, is_causal, scale),
        None,
    )


@_converts(aten._scaled_dot_product_efficient_attention.default)
def _sdpa_efficient(
    cx: ConversionContext,
    query: Any,
    key: Any,
    value: Any,
    attn_bias: Any,
    compute_log_sumexp: bool,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
) -> tuple:
    """(output, logsumexp, philox seed, philox offset): only the output is importable."""
    return (
        lambda: _attention(cx, query, key, value, attn_bias, dropout_p, is_causal, scale),
        None,
        None,
        None,
    )


@_converts(aten._scaled_dot_product_attention_math.default)
def _sdpa_math(
    cx: ConversionContext,
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    dropout_mask: Any = None,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple:
    """(output, attention weights): only the output is importable."""
    return (
        lambda: _attention(
            cx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
        ),
        None,
    )
