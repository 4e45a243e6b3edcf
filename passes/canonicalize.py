"""canonicalize: one normal form, so fusion patterns meet each computation written one way."""

from __future__ import annotations

import dataclasses
from collections import Counter
from math import prod

import torch

from cgc.ir import Graph, Node, Value, get_op
from cgc.ir.graph import format_dict
from cgc.passes.constants import is_known
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Match, Op, Rewrite, Var, apply_patterns, rewrite
from cgc.passes.registry import register_pass

x = Var("x")


def _keeps_type(m: Match) -> bool:
    """the result has the type of x"""
    return m["x"].type == m.root.output.type


def _is_identity(perm: list[int]) -> bool:
    """the identity permutation"""
    return list(perm) == list(range(len(perm)))


@rewrite(Op.reshape(x) | Op.expand(x) | Op.cast(x) | Op.slice(x), where=_keeps_type)
def drop_noop_data_movement(m: Match, g: Graph) -> Value:
    """reshape / expand / cast / slice of x to x's own type = x"""
    return m["x"]


@rewrite(Op.transpose(x, perm=_is_identity))
def drop_identity_transpose(m: Match, g: Graph) -> Value:
    """transpose(x, [0, 1, …]) = x"""
    return m["x"]


@rewrite(Op.reshape(Op.reshape(x)), single_use=False)
def fold_reshape_reshape(m: Match, g: Graph) -> Value:
    """reshape(reshape(x, s), t) = reshape(x, t)"""
    return g.call("reshape", m["x"], shape=list(m.root.output.shape))


@rewrite(Op.transpose(Op.transpose(x, name="inner")), single_use=False)
def fold_transpose_transpose(m: Match, g: Graph) -> Value:
    """transpose(transpose(x, p), q) = transpose(x, [p[i] for i in q])"""
    p, q = m["inner"].producer.attrs["perm"], m.root.attrs["perm"]
    return g.call("transpose", m["x"], perm=[p[i] for i in q])


a, b, y = Var("a"), Var("b"), Var("y")


def _merged_batch(flat: Value) -> tuple[int, ...] | None:
    """The leading axes of x that `flat = reshape(x)` merges into its first, or None.

    Views on such a flattened batch ([b·h, t, d] for [b, h, t, d], the bmm form of attention)
    commute with ops that treat every batch element alike, so the flatten can move after them
    and meet the view that restores the batch.
    """
    xs = flat.producer.inputs[0].shape
    for n in range(2, len(xs)):
        # A unit axis after the first is squeezed, not merged (GQA's [b, n, 1, s, d] repeat).
        if flat.shape == (prod(xs[:n]), *xs[n:]) and all(d > 1 for d in xs[1:n]):
            return xs[:n]
    return None


def _flat_batch(m: Match) -> bool:
    """the reshape merges leading axes of its input into one"""
    return _merged_batch(m["flat"]) is not None


def _batch_kept(m: Match) -> bool:
    """the transpose keeps the flattened batch axis first"""
    return _flat_batch(m) and m.root.attrs["perm"][0] == 0


@rewrite(Op.transpose(Op.reshape(x, name="flat")), where=_batch_kept)
def sink_flatten_transpose(m: Match, g: Graph) -> Value:
    """transpose(view(x, [N, …]), [0, p…]) = view(transpose(x, [b…, p…]), …)"""
    n = len(_merged_batch(m["flat"]))
    perm = [*range(n), *(n + p - 1 for p in m.root.attrs["perm"][1:])]
    moved = g.call("transpose", m["x"], perm=perm)
    return g.call("reshape", moved, shape=list(m.root.output.shape))


def _same_batch(m: Match) -> bool:
    """a and b are matrices over the same batch axes, flattened into one"""
    batch = _merged_batch(m["flat_a"])
    return (
        batch is not None
        and m["flat_a"].type.rank == 3
        and batch == _merged_batch(m["flat_b"])
        and m["a"].type.rank == m["b"].type.rank == len(batch) + 2
    )


@rewrite(Op.matmul(Op.reshape(a, name="flat_a"), Op.reshape(b, name="flat_b")), where=_same_batch)
def sink_flatten_matmul(m: Match, g: Graph) -> Value:
    """view(a, [N, m, k]) · view(b, [N, k, n]) = view(a · b, [N, m, n]) (aten's bmm form)"""
    return g.call("reshape", g.call("matmul", m["a"], m["b"]), shape=list(m.root.output.shape))


def _broadcasts_over_batch(m: Match) -> bool:
    """y broadcasts into the flattened x without widening it, per batch element or alike"""
    flat, other = m["flat"], m["y"]
    return (
        _flat_batch(m)
        and m.root.output.shape == flat.shape
        and other.type.rank <= flat.type.rank
        and (other.type.rank < flat.type.rank or other.shape[0] in (1, flat.shape[0]))
    )


def _unflattened(g: Graph, m: Match) -> Value:
    """y viewed with x's batch axes (or ones) in place of the flattened one."""
    other, flat = m["y"], m["flat"]
    if other.type.rank < flat.type.rank:
        return other
    batch = _merged_batch(flat)
    lead = (
        list(batch) if other.shape[0] == flat.shape[0] and flat.shape[0] > 1 else [1] * len(batch)
    )
    return g.call("reshape", other, shape=[*lead, *other.shape[1:]])


def _sink_through(op: str) -> Rewrite:
    flat = Op.reshape(x, name="flat")
    pattern = (
        Op(op, [flat, y]) if get_op(op).commutative else Alt(Op(op, [flat, y]), Op(op, [y, flat]))
    )

    @rewrite(pattern, where=_broadcasts_over_batch)
    def sink_flatten(m: Match, g: Graph) -> Value:
        """op(view(x, [N, …]), y) = view(op(x, y'), [N, …]) for elementwise op"""
        other = _unflattened(g, m)
        operands = [m["x"], other] if m.root.inputs[0] is m["flat"] else [other, m["x"]]
        return g.call("reshape", g.call(op, *operands), shape=list(m.root.output.shape))

    return dataclasses.replace(sink_flatten, name=f"sink-flatten-{op}")


def _expands_matrix_over_batch(m: Match) -> bool:
    """b is a matrix that the expand only repeats over leading (batch) axes"""
    b, expanded = m["b"].type, m["b_batch"].type
    a = m["a"].type
    return (
        b.rank == 2
        and expanded.shape[-2:] == b.shape
        and a.rank >= 2
        and a.shape[:-1] + b.shape[1:] == m.root.output.shape
    )


@rewrite(Op.matmul(a, Op.expand(b, name="b_batch")), where=_expands_matrix_over_batch)
def broadcast_matmul_operand(m: Match, g: Graph) -> Value:
    """a · expand(b, [N, k, n]) = a · b for a matrix b (aten's bmm form of a projection)"""
    return g.call("matmul", m["a"], m["b"])


@rewrite((x * 1.0) | (x / 1.0), where=_keeps_type)
def drop_mul_one(m: Match, g: Graph) -> Value:
    """x·1 = x/1 = x"""
    return m["x"]


@rewrite((x + 0.0) | (x - 0.0), where=_keeps_type)
def drop_add_zero(m: Match, g: Graph) -> Value:
    """x+0 = x-0 = x"""
    return m["x"]


RULES = [
    drop_noop_data_movement,
    drop_identity_transpose,
    fold_reshape_reshape,
    fold_transpose_transpose,
    sink_flatten_transpose,
    sink_flatten_matmul,
    broadcast_matmul_operand,
    *(_sink_through(op) for op in ("add", "sub", "mul", "div")),
    drop_mul_one,
    drop_add_zero,
]


@register_pass
class Canonicalize(Pass):
    """Fold constants, drop dead code, merge common subexpressions and no-op ops, order operands.

    Runs to a fixpoint:
    - constant folding: a node whose inputs are constants or parameters with data, all of at
      most `fold_limit` elements, becomes a `constant` when uniform, else a parameter; a
      transpose that only feeds `linear` its weight becomes the weight stored transposed
      (`<weight>.transpose`, any size, meta weights too), and so do slices of a weight used
      only in slices (`<weight>.slice`); other transposes are layouts, kept;
    - dead-code elimination of unused nodes and parameters;
    - common-subexpression elimination (same op, inputs and attributes);
    - concat operands with no elements dropped;
    - the identities in RULES (no-op views, view chains, x·1, x+0, a matrix expanded over a
      matmul's batch axes, and flattened batches ([b·h, t, d] views) moved after the
      transposes, matmuls and elementwise ops on them);
    - commutative operands ordered (computed, parameter, constant): constants come second.
    """

    name = "canonicalize"
    fold_limit: int = 1024

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        while True:
            before = stats.total()
            stats["fold"] += self.fold_constants(graph, ctx)
            stats["commute"] += order_operands(graph, ctx)
            stats["cse"] += eliminate_common(graph, ctx)
            stats["empty-operand"] += drop_empty_concat_operands(graph, ctx)
            stats.update(apply_patterns(graph, RULES, ctx))
            dead_nodes, dead_params = eliminate_dead(graph)
            stats["dead-node"] += dead_nodes
            stats["dead-param"] += dead_params
            if stats.total() == before:
                return PassResult.of(dict(stats))

    def fold_constants(self, graph: Graph, ctx: PassContext) -> int:
        """Evaluate small nodes whose inputs are all known; how many were folded."""
        folded = 0
        for node in list(graph.nodes):
            if not self._foldable(graph, node) or not ctx.allow_rewrite():
                continue
            _fold(graph, node)
            folded += 1
        return folded

    def _foldable(self, graph: Graph, node: Node) -> bool:
        if node.op == "constant" or len(node.outputs) != 1 or not node.inputs:
            return False
        if get_op(node.op).category != "primitive":
            return False
        if node.op == "transpose":
            # A layout change, not a computation: the consumer decides the layout, not the size.
            return _is_linear_weight_layout(graph, node) and _may_relayout(graph, node.inputs[0])
        if node.op == "slice" and _is_weight_part(graph, node):
            return _may_relayout(graph, node.inputs[0])  # parts stay trainable (see _fold)
        # A trainable weight is never folded into a new constant: its gradient would be lost.
        return node.output.type.numel <= self.fold_limit and all(
            is_known(graph, v) and v.type.numel <= self.fold_limit and v.name not in graph.trainable
            for v in node.inputs
        )


def _may_relayout(graph: Graph, weight: Value) -> bool:
    """Whether a weight may be stored in another layout, or in parts, under a new name.

    Not a trainable weight of a graph that outputs a loss (a 0-d float: what autodiff
    differentiates): training keys the optimizer state, checkpoints and the module's
    state_dict by each parameter's own name and shape, and a part of a weight would leave the
    rest of it out of the update (weight decay moves every element).
    """
    trained = any(v.type.rank == 0 and v.type.is_float for v in graph.outputs)
    return not (trained and weight.name in graph.trainable)


def _is_linear_weight_layout(graph: Graph, node: Node) -> bool:
    """A transpose of a weight (with real or meta data) used only to feed `linear` its weight.

    Storing the weight transposed costs no memory, since the original goes away, and gives
    backends the [out, in] layout `linear` expects (HF Conv1D weights are [in, out]).
    """
    w, out = node.inputs[0], node.outputs[0]
    return (
        node.op == "transpose"
        and graph.params.get(w.name) is w
        and w.name in graph.weights
        and w.users == [node]
        and bool(out.users)
        and all(
            u.op == "linear" and u.inputs[1] is out and u.inputs.count(out) == 1 for u in out.users
        )
    )


def _is_weight_part(graph: Graph, node: Node) -> bool:
    """A slice of a weight (real or meta data) that is only ever used in slices.

    nn.MultiheadAttention projects keys and values apart from queries with slices of its
    packed in_proj weight; as parameters of their own, the parts feed `linear` like any
    weight, and the packed one goes away, so no memory is duplicated.
    """
    w = node.inputs[0]
    return (
        graph.params.get(w.name) is w
        and w.name in graph.weights
        and all(u.op == "slice" for u in w.users)
    )


def _fold(graph: Graph, node: Node) -> None:
    """Replace `node` by its value: a filled `constant` when uniform, else a new parameter.

    A parameter made from exactly one other parameter is named after it (`w.transpose`), so
    folded weights keep their provenance; otherwise the result takes the folded value's name.
    A trainable weight stored transposed stays trainable (only layouts of weights fold).
    """
    args = [_known_data(graph, v) for v in node.inputs]
    with torch.no_grad():
        data = get_op(node.op).impl(*args, **node.attrs)
    out = node.output
    flat = data.reshape(-1)
    trainable = any(v.name in graph.trainable for v in node.inputs)
    with graph.inserting_before(node, node.meta):
        if not trainable and not data.is_meta and flat.numel() and bool((flat == flat[0]).all()):
            attrs = {"value": flat[0].item(), "dtype": out.dtype, "shape": list(out.shape)}
            new = graph.add_node("constant", [], attrs).output
        else:
            # A copy, not a view: a view would pin (and share storage with) the source weight.
            data = data.clone(memory_format=torch.contiguous_format)
            new = graph.add_param(graph.fresh_name(out.name), out.type, data, trainable=trainable)
    params = [v.name for v in node.inputs if v.producer is None]
    name = f"{params[0]}.{node.op}" if len(params) == 1 and new.producer is None else out.name
    graph.replace_all_uses(out, new)
    graph.erase_node(node)
    graph.rename(new, graph.fresh_name(name))


def _known_data(graph: Graph, value: Value) -> torch.Tensor:
    node = value.producer
    if node is None:
        return graph.weights[value.name]
    return get_op("constant").impl(**node.attrs)


def _operand_rank(graph: Graph, value: Value) -> int:
    if value.producer is not None:
        return 2 if value.producer.op == "constant" else 0
    return 1 if graph.params.get(value.name) is value else 0


def order_operands(graph: Graph, ctx: PassContext) -> int:
    """Put commutative operands in (computed, parameter, constant) order; how many swapped."""
    swapped = 0
    for node in graph.nodes:
        if not get_op(node.op).commutative or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if _operand_rank(graph, a) > _operand_rank(graph, b) and ctx.allow_rewrite():
            node.inputs = [b, a]
            swapped += 1
    return swapped


def eliminate_common(graph: Graph, ctx: PassContext) -> int:
    """Merge nodes with the same op, inputs and attributes into the first; how many merged."""
    seen: dict[tuple, Node] = {}
    merged = 0
    for node in list(graph.nodes):
        key = (node.op, tuple(id(v) for v in node.inputs), format_dict(node.attrs))
        first = seen.setdefault(key, node)
        if first is node or not ctx.allow_rewrite():
            continue
        for old, new in zip(node.outputs, first.outputs, strict=True):
            graph.replace_all_uses(old, new)
        graph.erase_node(node)
        merged += 1
    return merged


def drop_empty_concat_operands(graph: Graph, ctx: PassContext) -> int:
    """concat(a, ∅, b) = concat(a, b) and concat(a) = a, for operands with no elements (what
    `x[..., d:]` leaves when a rotary covers the whole head); how many concats changed."""
    changed = 0
    for node in list(graph.nodes):
        if node.op != "concat":
            continue
        kept = [v for v in node.inputs if v.type.numel > 0]
        if not kept or len(kept) == len(node.inputs) or not ctx.allow_rewrite():
            continue
        with graph.inserting_before(node, node.meta):
            new = kept[0] if len(kept) == 1 else graph.call("concat", *kept, **node.attrs)
        graph.replace_all_uses(node.output, new)
        graph.erase_node(node)
        changed += 1
    return changed


def eliminate_dead(graph: Graph) -> tuple[int, int]:
    """Erase nodes and parameters nothing uses; (nodes, parameters) removed."""
    outputs = {id(v) for v in graph.outputs}
    nodes = 0
    for node in reversed(list(graph.nodes)):
        if all(not v.users and id(v) not in outputs for v in node.outputs):
            graph.erase_node(node)
            nodes += 1
    params = 0
    for name, v in list(graph.params.items()):
        if not v.users and id(v) not in outputs:
            graph.remove_param(name)
            params += 1
    return nodes, params
