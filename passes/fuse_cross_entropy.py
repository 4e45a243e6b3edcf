"""fuse-cross-entropy: the primitive forms of a softmax cross-entropy become `cross_entropy`.

Row losses, for logits x [..., V] and integer targets t [...] (pick(y) = y[..., t] with y x or
a view of it with the same last axis, written as
reduce_sum(where(eq(t', iota), y, 0)) over the last axis, t' a [..., 1] view of t, possibly
clamped to 0 where ignored or wrapped where negative, as torch's and ONNX's gathers are):

    nll    = -pick(log_softmax(x))              nll_loss, F.cross_entropy, SoftmaxCrossEntropyLoss
           | logsumexp(x) - pick(x)             written out with logsumexp and gather
    masked = where(t != c, nll, 0) | where(t == c, 0, nll)                       ignore_index c

Reductions over every axis:

    sum(masked) / count(t != c)  = cross_entropy(x, t){reduction="mean", ignore_index=c}
    sum(masked)                  = cross_entropy(x, t){reduction="sum", ignore_index=c}
    sum(nll)                     = cross_entropy(x, t){reduction="sum"}      (nothing ignored)
    mean(masked or nll)          = cross_entropy(x, t){reduction="sum"} / rows
    -sum(pick(log_softmax(x)))   = cross_entropy(x, t){reduction="sum"}      (and -mean: / rows)

A count makes the mean only when it counts the same targets (views of one tensor) that differ
from the same c; any other divisor (num_items_in_batch, a clamped count) stays a division of
the fused sum. Logits and targets of any rank are reshaped to [rows, V] and [rows]. Matched
intermediates used elsewhere are left in place (a log_softmax that is also an output is then
computed twice), so the loss always fuses. As for cross_entropy itself, targets are in [0, V) or
ignore_index: the wrap a gather gives negative indices is dropped, as torch's cross_entropy
has no loss for them (it raises).
"""

from __future__ import annotations

import math

import torch

from cgc.ir import Graph, Node, Value
from cgc.ir.ops.loss import INDEX_DTYPES, LOSS_ATTRS
from cgc.passes.constants import constant_data
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import (
    Alt,
    Const,
    Match,
    Op,
    Pattern,
    Var,
    apply_patterns,
    constant_number,
    rewrite,
)
from cgc.passes.predicates import is_float, over_last_axis
from cgc.passes.registry import register_pass


def _integral(number: float) -> bool:
    """an integer"""
    return math.isfinite(number) and number == int(number)


def _last_axis(node: Node) -> bool:
    """over the last axis only"""
    rank = node.inputs[0].type.rank
    axes = node.attrs["axes"] if "axes" in node.attrs else [node.attrs["axis"]]
    return [a % rank for a in axes] == [rank - 1]


def _every_axis(node: Node) -> bool:
    """a reduction over every axis"""
    rank = node.inputs[0].type.rank
    return sorted(a % rank for a in node.attrs["axes"]) == list(range(rank))


def _view(p: Pattern) -> Alt:
    """p, or a reshape of it."""
    return Alt(Op.reshape(p), p)


x = Var("x", where=is_float)
t = Var("t")
ignore = Const(name="ignore", where=_integral)


def _pick(y: Pattern) -> Op:
    """y at the targets along the last axis: the one-hot select-sum, keeping the axis or not."""
    hot = Op.eq(Var("index"), Var("iota"), name="hot")
    return Op.reduce_sum(Op.where(hot, y, 0.0, name="select"), where=_last_axis, name="pick")


def _logsumexp(shift: Pattern) -> Op:
    """log(Σ exp(x - shift)) + shift over the last axis, kept."""
    total = Op.reduce_sum(Op.exp(x - shift), where=over_last_axis)
    return Op.add(Op.log(total), shift, name="lse")


_max = Op.reduce_max(x, where=over_last_axis)
logsumexp = Alt(
    _logsumexp(Op.where(Op.eq(Op.abs(_max), float("inf")), 0.0, _max)),  # torch's ±inf guard
    _logsumexp(Op.reduce_max(x, where=over_last_axis)),
)
logp = _view(Op.log_softmax(x, where=_last_axis))
log_likelihood = _view(_pick(logp))
nll = Alt(
    Op.neg(log_likelihood, name="rows"),
    Op.reshape(Op.neg(_pick(logp)), name="rows"),
    Op.sub(_view(logsumexp), _view(_pick(x)), name="rows"),
)
masked = Alt(
    Op.where(Alt(Op.ne(t, ignore), Op.logical_not(Op.eq(t, ignore))), nll, 0.0, name="mask"),
    Op.where(Op.eq(t, ignore), 0.0, nll, name="mask"),
)
counted = Op.reduce_sum(
    Op.cast(
        Alt(
            Op.ne(Var("t_count"), Const(name="count_ignore")),
            Op.logical_not(Op.eq(Var("t_count"), Const(name="count_ignore"))),
        ),
        name="flags",
    ),
    where=_every_axis,
)
count = Alt(Op.cast(counted), counted)


# -- what the patterns cannot say --------------------------------------------------------------


def _views_of(value: Value) -> Value:
    """The tensor a chain of reshapes starts from (reshapes keep the element order)."""
    while value.producer is not None and value.producer.op == "reshape":
        value = value.producer.inputs[0]
    return value


def _clamped(node: Node, graph: Graph | None) -> tuple[Value, float | None] | None:
    """(t, c) when `node` sends ignored targets to 0 before a gather, else None.

    where(t != c, t, 0) and where(t == c, 0, t) (torch's and masked_fill's clamps) send c;
    maximum(t, 0) (clamp(min=0)) sends every negative target, c None.
    """
    if node.op == "maximum" and constant_number(node.inputs[1], graph) == 0:
        return node.inputs[0], None
    if node.op != "where" or node.inputs[0].producer is None:
        return None
    cond, a, b = node.inputs[0].producer, node.inputs[1], node.inputs[2]
    negated = cond.op == "logical_not"
    if negated:
        cond = cond.inputs[0].producer
        if cond is None:
            return None
    keeps = (cond.op == "ne") != negated  # true where the target counts
    chosen, other = (a, b) if keeps else (b, a)
    if cond.op not in ("eq", "ne") or chosen not in cond.inputs:
        return None
    c = constant_number(cond.inputs[1] if cond.inputs[0] is chosen else cond.inputs[0], graph)
    return (chosen, c) if c is not None and constant_number(other, graph) == 0 else None


def _wrapped(node: Node, size: int, graph: Graph | None) -> Value | None:
    """t for where(t < 0, t + size, t), the wrap of negative gather indices, else None."""
    if node.op != "where" or node.inputs[0].producer is None:
        return None
    cond, shifted, plain = node.inputs[0].producer, node.inputs[1], node.inputs[2]
    if cond.op != "lt" or cond.inputs[0] is not plain or constant_number(cond.inputs[1], graph):
        return None
    add = shifted.producer
    if add is None or add.op != "add" or plain not in add.inputs:
        return None
    other = add.inputs[1] if add.inputs[0] is plain else add.inputs[0]
    return plain if constant_number(other, graph) == size else None


def _index_source(m: Match) -> tuple[Value, list[float | None]]:
    """The targets the one-hot compares (views, clamps and wraps removed), and what each clamp
    sends to 0 (c, or None for every negative target)."""
    value, clamps = _views_of(m["index"]), []
    size = m["x"].shape[-1]
    while value.producer is not None:
        unwrapped = _wrapped(value.producer, size, m.graph)
        clamped = _clamped(value.producer, m.graph)
        if unwrapped is not None:
            value = _views_of(unwrapped)
        elif clamped is not None:
            value, clamps = _views_of(clamped[0]), [*clamps, clamped[1]]
        else:
            break
    return value, clamps


def _is_iota(m: Match) -> bool:
    """the one-hot compares the targets with 0 … V-1 along the last axis"""
    data = constant_data(m.graph, m["iota"]) if m.graph is not None else None
    size = m["x"].shape[-1]
    if data is None or data.shape[-1:] != (size,) or data.numel() != size:
        return False
    return torch.equal(data.reshape(-1).long(), torch.arange(size))


def _rows_line_up(m: Match) -> bool:
    """one target per row of x, no operand broadcast to another shape, one loss of x's type"""
    xs, ys = m["x"].shape, m["select"].producer.inputs[1].shape  # ys: x or a view of it
    rows = m["x"].type.numel // xs[-1]
    if ys[-1:] != xs[-1:] or m["index"].shape != ys[:-1] + (1,):
        return False
    if m["select"].shape != ys or m["hot"].shape != ys:
        return False
    row_loss = m["rows"] if "rows" in m else m["pick"]
    if "rows" in m and any(v.type.numel != rows for v in row_loss.producer.inputs if v.type.rank):
        return False
    if "mask" in m and {v.shape for v in m["mask"].producer.inputs if v.type.rank} != {
        row_loss.shape
    }:
        return False
    loss = m.root.output
    return row_loss.type.numel == rows and loss.type.numel == 1 and loss.dtype == m["x"].dtype


def _targets_agree(m: Match) -> bool:
    """the one-hot reads integer targets, clamped only where the mask ignores them"""
    source, clamps = _index_source(m)
    if source.dtype not in INDEX_DTYPES:
        return False
    if "mask" not in m:
        return not clamps
    ignore = m.number("ignore")
    sent = all(c == ignore if c is not None else ignore < 0 for c in clamps)
    return _views_of(m["t"]) is source and sent


def _counts_the_mask(m: Match) -> bool:
    """the divisor counts the targets the mask keeps, exactly"""
    flags = m["flags"].producer.attrs["dtype"]
    exact = flags in INDEX_DTYPES or flags in ("f32", "f64")
    same = _views_of(m["t_count"]) is _views_of(m["t"])
    return exact and same and m.number("count_ignore") == m.number("ignore")


FITS = (_is_iota, _rows_line_up, _targets_agree)


def _cross_entropy(m: Match, g: Graph, reduction: str, ignore_index: int) -> Value:
    """cross_entropy of x and its targets, reshaped to [rows, V] and [rows]."""
    logits = m["x"]
    size = logits.shape[-1]
    rows = logits.type.numel // size
    if logits.shape != (rows, size):
        logits = g.call("reshape", logits, shape=[rows, size])
    targets, _ = _index_source(m)
    if targets.shape != (rows,):
        targets = g.call("reshape", targets, shape=[rows])
    return g.call("cross_entropy", logits, targets, ignore_index=ignore_index, reduction=reduction)


def _as_root(m: Match, g: Graph, loss: Value) -> Value:
    """The loss in the root's shape (reductions with keepdim give [1, …])."""
    shape = m.root.output.shape
    return loss if loss.shape == shape else g.call("reshape", loss, shape=list(shape))


def _ignored(m: Match) -> int:
    return int(m.number("ignore")) if "mask" in m else LOSS_ATTRS["ignore_index"]


def _per_row(m: Match, g: Graph, total: Value) -> Value:
    """The fused sum divided by the number of rows (a mean over every row)."""
    rows = m["x"].type.numel // m["x"].shape[-1]
    return g.call("div", total, g.constant(float(rows), total.dtype))


@rewrite(
    Op.div(Op.reduce_sum(masked, where=_every_axis), count),
    where=(*FITS, _counts_the_mask),
    single_use=False,
)
def cross_entropy_mean(m: Match, g: Graph) -> Value:
    """sum(where(t != c, nll, 0)) / count(t != c) = cross_entropy(x, t){mean, ignore_index=c}"""
    return _as_root(m, g, _cross_entropy(m, g, "mean", int(m.number("ignore"))))


@rewrite(Op.reduce_sum(Alt(masked, nll), where=_every_axis), where=FITS, single_use=False)
def cross_entropy_sum(m: Match, g: Graph) -> Value:
    """sum(where(t != c, nll, 0)) = cross_entropy(x, t){sum, ignore_index=c}; sum(nll) alike"""
    return _as_root(m, g, _cross_entropy(m, g, "sum", _ignored(m)))


@rewrite(Op.reduce_mean(Alt(masked, nll), where=_every_axis), where=FITS, single_use=False)
def cross_entropy_row_mean(m: Match, g: Graph) -> Value:
    """mean(nll) = cross_entropy(x, t){sum} / rows (the mean counts ignored rows too)"""
    return _as_root(m, g, _per_row(m, g, _cross_entropy(m, g, "sum", _ignored(m))))


@rewrite(
    Op.neg(
        Alt(
            Op.reduce_sum(log_likelihood, where=_every_axis),
            Op.reduce_mean(log_likelihood, where=_every_axis),
        )
    ),
    where=FITS,
    single_use=False,
)
def negated_log_likelihood(m: Match, g: Graph) -> Value:
    """-sum(pick(log_softmax(x))) = cross_entropy(x, t){sum}; -mean(…) = that / rows"""
    total = _cross_entropy(m, g, "sum", LOSS_ATTRS["ignore_index"])
    reduced = m.root.inputs[0].producer
    return _as_root(m, g, _per_row(m, g, total) if reduced.op == "reduce_mean" else total)


RULES = [cross_entropy_mean, cross_entropy_sum, cross_entropy_row_mean, negated_log_likelihood]


@register_pass
class FuseCrossEntropy(Pass):
    """Fuse softmax cross-entropy forms (log_softmax + nll, logsumexp - gather) into cross_entropy.

    Row losses -pick(log_softmax(x), t) or logsumexp(x) - pick(x, t) (pick: the one-hot gather
    frontends emit), optionally masked where t == ignore_index, then summed (reduction "sum"),
    summed and divided by the count of the same non-ignored targets (reduction "mean"), or
    averaged over every row (the sum over the row count). Any other divisor stays a division of
    the fused sum. Logits and targets are reshaped to [rows, V] and [rows].
    """

    name = "fuse-cross-entropy"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, RULES, ctx))
