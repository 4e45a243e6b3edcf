"""kv-cache: derive the cached step graph of a causal language model from its full-sequence graph.

The input is an optimised graph that maps token ids [B, C] to logits, traced at the cache
capacity C. The pass rebuilds it for T new tokens that follow `past_length` cached ones:

    graph @gpt_decode(%input_ids: i64[B,T], %past_length: i64[1],
                      %k_cache.0: f32[B,H,C,D], %v_cache.0: f32[B,H,C,D], ...)
      -> %logits (the last new token's), %k_cache.0.next, %v_cache.0.next, ...

T = 1 gives the decode graph, T = P the prefill graph of a P-token prompt; both share the
weights of the source graph. Every causal `attention` becomes a `cached_attention` reading and
writing its layer's cache (see cgc/ir/ops/cached_attention.py for the layout).

What it relies on, and proves or refuses (InputError, one line naming the op and its source):

- one input, the token ids [B, C], and one output, the logits;
- nothing mixes information across positions except attention: a forward analysis gives every
  value the axis its positions live on (through reshapes, transposes, broadcasts) and checks
  each op against it: elementwise ops, reductions and softmax off the position axis, linear
  and layer norm on the feature axis, embedding lookups per token, matmuls whose contracted
  axis is not the position axis. Anything else touching positions is refused;
- attention is causal self-attention without a mask operand (queries, keys and values at the
  same positions), so position i needs only positions <= i, which the cache holds. Its
  grouped key-value heads (the cache holds num_kv_heads heads), sliding window and ALiBi
  slopes carry over: they depend only on the query's and the key's positions, which the cache
  keeps (slot j holds position j);
- rotary embeddings turn position i by row i of their tables (the op's definition): the
  tables must be known, and the step graph takes their rows at the new positions;
- positions enter only as constants laid out along the position axis (the `arange` the model
  built, a learned position table, folded or not, and what is computed from them): the
  full-sequence graph uses row i of such a constant at position i, so the step graph uses
  rows past_length ... past_length + T - 1. An `arange` of the positions becomes the position
  input itself; other constants are looked up at it, as far up their computation as each op
  allows (a learned table is looked up, never computed in full);
- a slice of the position axis keeps all positions or only the last one (nanoGPT's inference
  `x[:, [-1], :]`).

The logits are then needed at the last new token only: the slice selecting it is moved up
through the row-wise ops after the last attention, so prefill runs the LM head on one row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch

from cgc.errors import InputError
from cgc.ir import Graph, Node, TensorType, Value
from cgc.passes.canonicalize import Canonicalize
from cgc.passes.constants import constant_data
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.registry import register_pass

POSITIONS_INPUT = "past_length"
LOGITS = "logits"

ELEMENTWISE = frozenset(
    {
        *("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf"),
        *("sigmoid", "relu", "logical_not", "gelu", "silu", "cos", "sin", "cast"),
        *("add", "sub", "mul", "div", "pow", "maximum", "minimum", "where"),
        *("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or"),
    }
)
REDUCTIONS = frozenset({"reduce_sum", "reduce_mean", "reduce_max", "var"})


@dataclass(frozen=True)
class Pos:
    """Where a value's positions live: axis `axis` of size outer·n·inner, n the positions."""

    axis: int
    outer: int = 1
    inner: int = 1


KNOWN = "known"  # computed from parameters and constants only
LAST = "last"  # the last position alone, its axis already selected away
Info = Pos | str


def cache_names(i: int) -> tuple[str, str]:
    """Names of layer i's cache inputs; the outputs append `.next`."""
    return f"k_cache.{i}", f"v_cache.{i}"


def _where(node: Node) -> str:
    return f"{node.op} at {node.meta.get('source', 'unknown source')}"


def _refuse(node: Node, why: str) -> InputError:
    return InputError(f"kv-cache: {_where(node)} {why}; cannot derive a cached decoder")


def _resized(shape: Sequence[int], pos: Pos, n: int) -> list[int]:
    out = list(shape)
    out[pos.axis] = pos.outer * n * pos.inner
    return out


def _reshape_pos(src: Sequence[int], pos: Pos, dst: Sequence[int], n: int) -> Pos | None:
    """The position axis of `src` (n positions) viewed as `dst`, or None when it is split."""
    stride = pos.inner * prod(src[pos.axis + 1 :])
    for j in reversed(range(len(dst))):
        suffix = prod(dst[j + 1 :])
        if suffix <= stride < suffix * dst[j]:
            if stride % suffix or dst[j] % (stride // suffix * n):
                return None
            inner = stride // suffix
            return Pos(j, dst[j] // (inner * n), inner)
    return None


def _aligned(pos: Pos, rank: int, out_rank: int) -> Pos:
    return Pos(pos.axis + out_rank - rank, pos.outer, pos.inner)


class _Rebuild:
    """Rebuilds the source graph at `tokens` positions into a new graph, op by op."""

    def __init__(self, src: Graph, tokens: int) -> None:
        self.src = src
        self.tokens = tokens
        (ids,) = src.inputs
        self.capacity = ids.shape[1]
        self.batch = ids.shape[0]
        self.g = Graph(f"{src.name}_{'decode' if tokens == 1 else 'prefill'}")
        self.info: dict[int, Info] = {}
        self.new: dict[int, Value] = {}
        self.local: dict[tuple[int, Pos], Value] = {}
        self.caches = 0
        new_ids = self.g.add_input(ids.name, TensorType((self.batch, tokens), ids.dtype))
        self.past = self.g.add_input(POSITIONS_INPUT, TensorType((1,), "i64"))
        self.info[id(ids)] = Pos(1)
        self.new[id(ids)] = new_ids
        self._positions: Value | None = None
        self._past_batch: Value | None = None
        self.cache_outputs: list[Value] = []
        self.rows: dict[int, Pos] = {}  # new values carrying the new positions, and where
        self.cuts: list[Node] = []  # slices taking the last row, still to be moved up

    # -- values --------------------------------------------------------------------------------

    def info_of(self, v: Value) -> Info:
        return self.info.get(id(v), KNOWN)

    def value(self, v: Value) -> Value:
        """The new graph's value for an old one; known values are copied on first use."""
        if id(v) in self.new:
            return self.new[id(v)]
        if v.producer is None:
            new = self.g.add_param(v.name, v.type, self.src.weights.get(v.name))
        else:
            node = v.producer
            ins = [self.value(i) for i in node.inputs]
            outs = self.emit(node, ins, {})
            for old, o in zip(node.outputs, outs, strict=True):
                self.new[id(old)] = o
            return self.new[id(v)]
        self.new[id(v)] = new
        return new

    @property
    def positions(self) -> Value:
        """i64[T]: past_length + 0, 1, ..., T - 1."""
        if self._positions is None:
            steps = torch.arange(self.tokens)
            offsets = self.g.add_param(
                self.g.fresh_name(f"arange.{self.tokens}"), TensorType((self.tokens,), "i64"), steps
            )
            self._positions = self.g.call("add", self.past, offsets)
        return self._positions

    @property
    def past_batch(self) -> Value:
        """i64[B]: past_length for every sequence, as cached_attention takes it."""
        if self._past_batch is None:
            self._past_batch = self.g.call("expand", self.past, shape=[self.batch])
        return self._past_batch

    def localize(self, v: Value, pos: Pos) -> Value:
        """Known value `v` with its axis `pos` (capacity rows, one per position) at the new
        positions: pushed up its computation where each op allows, else looked up."""
        key = (id(v), pos)
        if key not in self.local:
            self.local[key] = self._localize(v, pos)
            self.rows[id(self.local[key])] = pos
        return self.local[key]

    def _localize(self, v: Value, pos: Pos) -> Value:
        node = v.producer
        if pos.outer != 1 or pos.inner != 1:
            raise InputError(
                f"kv-cache: constant %{v.name} {v.type} mixes its position axis with another; "
                "cannot look it up per position"
            )
        data = constant_data(self.src, v) if v.type.numel <= self.capacity else None
        arange = torch.arange(self.capacity, dtype=v.type.torch_dtype)
        if v.type.rank == 1 and data is not None and torch.equal(data, arange):
            return (
                self.positions
                if v.dtype == "i64"
                else self.g.call("cast", self.positions, dtype=v.dtype)
            )
        if node is not None and node.op == "constant":
            attrs = dict(node.attrs, shape=_resized(v.shape, pos, self.tokens))
            return self.g.add_node("constant", [], attrs, node.meta).output
        if node is not None and len(node.outputs) == 1:
            ins = self._localize_inputs(node, pos)
            if ins is not None:
                return self.emit(node, ins, {0: pos})[0]
        return self._lookup(v, pos)

    def _localize_inputs(self, node: Node, pos: Pos) -> list[Value] | None:
        """The new inputs of known `node` whose output has positions at `pos`, or None."""
        out = node.output
        if node.op in ELEMENTWISE:
            ins = []
            for i in node.inputs:
                axis = pos.axis - (out.type.rank - i.type.rank)
                if axis < 0 or i.shape[axis] == 1:
                    ins.append(self.value(i))
                elif i.shape[axis] == self.capacity:
                    ins.append(self.localize(i, Pos(axis)))
                else:
                    return None
            return ins
        if node.op == "embedding" and pos.axis < node.inputs[1].type.rank:
            return [self.value(node.inputs[0]), self.localize(node.inputs[1], pos)]
        if node.op == "transpose":
            return [self.localize(node.inputs[0], Pos(node.attrs["perm"][pos.axis]))]
        if node.op == "reshape":
            src = _reshape_pos(out.shape, pos, node.inputs[0].shape, self.capacity)
            if src is not None and src == Pos(src.axis):
                return [self.localize(node.inputs[0], src)]
        return None

    def _lookup(self, v: Value, pos: Pos) -> Value:
        """Rows of known `v` along `pos` at the new positions: one embedding lookup."""
        g, x = self.g, self.value(v)
        rest = [d for i, d in enumerate(v.shape) if i != pos.axis]
        perm = [pos.axis] + [i for i in range(v.type.rank) if i != pos.axis]
        if pos.axis != 0:
            x = g.call("transpose", x, perm=perm)
        x = g.call("reshape", x, shape=[self.capacity, prod(rest)])
        x = g.call("embedding", x, self.positions)
        x = g.call("reshape", x, shape=[self.tokens, *rest])
        if pos.axis != 0:
            x = g.call("transpose", x, perm=sorted(range(v.type.rank), key=perm.__getitem__))
        return x

    # -- nodes ---------------------------------------------------------------------------------

    def emit(self, node: Node, ins: list[Value], out_pos: dict[int, Pos]) -> list[Value]:
        """`node` on new inputs, shape attributes resized on the position axis of its outputs."""
        attrs = dict(node.attrs)
        if node.op in ("reshape", "expand", "constant") and 0 in out_pos:
            attrs["shape"] = _resized(node.output.shape, out_pos[0], self.tokens)
        names = [self.g.fresh_name(v.name) for v in node.outputs]
        return self.g.add_node(node.op, ins, attrs, node.meta, names=names).outputs

    def run(self) -> Graph:
        """Every node of the source graph, then the outputs; the new graph."""
        for node in self.src.nodes:
            if all(self.info_of(i) == KNOWN for i in node.inputs):
                continue  # known values are copied (or looked up) where they are used
            self.node(node)
        (out,) = self.src.outputs
        logits = self._last(out)
        self.g.outputs = [logits, *self.cache_outputs]
        if logits.name != LOGITS:
            taken = next((v for v in self.g.values() if v.name == LOGITS), None)
            if taken is not None:
                self.g.rename(taken, self.g.fresh_name(f"{LOGITS}_"))
            self.g.rename(logits, LOGITS)
        return self.g

    def _last(self, out: Value) -> Value:
        """The logits of the last new token: a slice, moved up through the row-wise ops."""
        info = self.info_of(out)
        if info == LAST:
            return self.new[id(out)]
        if not isinstance(info, Pos) or info != Pos(info.axis) or not out.type.is_float:
            raise InputError(
                f"kv-cache: the output %{out.name} {out.type} is not logits along the positions"
            )
        if self.tokens == 1:  # the one row is the last
            return self.new[id(out)]
        self.g.outputs = [self._cut(self.new[id(out)])]
        while any(self._sink(cut) for cut in list(self.cuts)):
            pass
        return self.g.outputs[0]

    def _cut(self, v: Value) -> Value:
        """v at its last row (v carries the new positions)."""
        pos = self.rows[id(v)]
        attrs = {"axis": pos.axis, "start": self.tokens - 1, "end": self.tokens}
        name = self.g.fresh_name(f"{v.name}.last")
        last = self.g.add_node("slice", [v], attrs, names=[name]).output
        self.cuts.append(last.producer)
        self.rows[id(last)] = pos
        return last

    def _sink(self, cut: Node) -> bool:
        """Move the last-row slice `cut` above its operand's producer when that acts row by row
        and every use of the operand is such a slice; whether it moved."""
        v = cut.inputs[0]
        node, pos = v.producer, self.rows.get(id(v))
        cuts = list(v.users)
        if (
            node is None
            or node.op not in _ROW_WISE
            or pos is None
            or pos != Pos(pos.axis)
            or v in self.g.outputs
            or not all(u in self.cuts for u in cuts)
        ):
            return False
        first = min(cuts, key=self.g.nodes.index)
        with self.g.inserting_before(first, node.meta):
            ins = [self._cut(i) if id(i) in self.rows else i for i in node.inputs]
            attrs = dict(node.attrs)
            if node.op in ("reshape", "expand"):
                attrs["shape"] = _resized(node.output.shape, pos, 1)
            new = self.g.add_node(node.op, ins, attrs, node.meta).output
        self.rows[id(new)] = pos
        for c in cuts:
            self.g.replace_all_uses(c.output, new)
            self.g.erase_node(c)
            self.cuts.remove(c)
        self.g.erase_node(node)
        if new not in self.g.outputs:  # an output keeps its name
            self.g.rename(new, self.g.fresh_name(f"{v.name}.last"))
        return True

    def node(self, node: Node) -> None:
        infos = [self.info_of(i) for i in node.inputs]
        rule = _RULES.get(node.op)
        if node.op in ELEMENTWISE:
            rule = _elementwise
        elif node.op in REDUCTIONS:
            rule = _reduction
        if rule is None:
            raise _refuse(
                node, "acts on positions in a way the pass does not know to be per position"
            )
        out_infos, ins = rule(self, node, infos)
        if ins is None:  # the rule built the outputs itself
            outs = [self.new[id(v)] for v in node.outputs]
        else:
            out_pos = {i: p for i, p in enumerate(out_infos) if isinstance(p, Pos)}
            outs = self.emit(node, ins, out_pos)
        for old, new, info in zip(node.outputs, outs, out_infos, strict=True):
            self.new[id(old)] = new
            self.info[id(old)] = info
            if isinstance(info, Pos):
                self.rows[id(new)] = info


_ROW_WISE = ELEMENTWISE | {"layer_norm", "rms_norm", "linear", "swiglu"}

# A rule checks one node against the position axes of its inputs and returns the position axes
# of its outputs with the node's new inputs, or None when it built the new outputs itself.
Rule = Callable[[_Rebuild, Node, list[Info]], tuple[list[Info], list[Value] | None]]


def _only_pos(node: Node, infos: list[Info]) -> Pos:
    """The position axis of the node's single position-carrying input (others known)."""
    if LAST in infos:
        raise _refuse(node, "combines the last position with others")
    pos = [i for i in infos if isinstance(i, Pos)]
    return pos[0]


def _elementwise(
    r: _Rebuild, node: Node, infos: list[Info]
) -> tuple[list[Info], list[Value] | None]:
    out = node.output
    if LAST in infos:
        if any(isinstance(i, Pos) for i in infos):
            raise _refuse(node, "combines the last position with all positions")
        return [LAST], [r.value(i) for i in node.inputs]
    aligned = {
        _aligned(p, v.type.rank, out.type.rank)
        for p, v in zip(infos, node.inputs, strict=True)
        if isinstance(p, Pos)
    }
    if len(aligned) != 1:
        raise _refuse(node, "combines values whose positions lie on different axes")
    (pos,) = aligned
    ins = []
    for info, v in zip(infos, node.inputs, strict=True):
        axis = pos.axis - (out.type.rank - v.type.rank)
        if isinstance(info, Pos) or axis < 0 or v.shape[axis] == 1:
            ins.append(r.value(v))
        elif v.shape[axis] == out.shape[pos.axis]:
            ins.append(r.localize(v, Pos(axis, pos.outer, pos.inner)))
        else:
            raise _refuse(node, f"broadcasts %{v.name} {v.type} along the positions")
    return [pos], ins


def _reduction(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    (info,) = infos
    if info == LAST:
        return [LAST], [r.value(node.inputs[0])]
    rank = node.inputs[0].type.rank
    axes = {a % rank for a in node.attrs["axes"]}
    if info.axis in axes:
        raise _refuse(node, "reduces over the positions")
    axis = info.axis if node.attrs["keepdim"] else info.axis - sum(a < info.axis for a in axes)
    return [Pos(axis, info.outer, info.inner)], [r.value(node.inputs[0])]


def _feature_axis(
    r: _Rebuild, node: Node, infos: list[Info]
) -> tuple[list[Info], list[Value] | None]:
    """Ops on the last (feature) axis with known parameters: layer and RMS norm, linear, swiglu."""
    x = node.inputs[0]
    if any(i != KNOWN for i in infos[1:]):
        raise _refuse(node, "takes position-dependent weights")
    ins = [r.value(v) for v in node.inputs]
    if infos[0] == LAST:
        return [LAST], ins
    if infos[0].axis == x.type.rank - 1:
        raise _refuse(node, "acts along the positions")
    return [infos[0]], ins


def _axis_attr(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    """softmax / log_softmax along one axis."""
    (info,) = infos
    ins = [r.value(node.inputs[0])]
    if info == LAST:
        return [LAST], ins
    if node.attrs["axis"] % node.inputs[0].type.rank == info.axis:
        raise _refuse(node, "normalises over the positions")
    return [info], ins


def _transpose(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    (info,) = infos
    ins = [r.value(node.inputs[0])]
    if info == LAST:
        return [LAST], ins
    perm = node.attrs["perm"]
    return [Pos(perm.index(info.axis), info.outer, info.inner)], ins


def _reshape(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    (info,) = infos
    ins = [r.value(node.inputs[0])]
    if info == LAST:
        return [LAST], ins
    pos = _reshape_pos(node.inputs[0].shape, info, node.output.shape, r.capacity)
    if pos is None:
        raise _refuse(node, "splits the position axis")
    return [pos], ins


def _expand(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    (info,) = infos
    ins = [r.value(node.inputs[0])]
    if info == LAST:
        return [LAST], ins
    return [_aligned(info, node.inputs[0].type.rank, node.output.type.rank)], ins


def _slice(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    (info,) = infos
    x = node.inputs[0]
    a = node.attrs
    if info == LAST or a["axis"] % x.type.rank != info.axis:
        return [info], [r.value(x)]
    n = r.capacity
    if info.outer == 1 and info.inner == 1 and a["step"] == 1:
        if (a["start"], a["end"]) == (0, n):
            return [info], [r.value(x)]
        if (a["start"], a["end"]) == (n - 1, n):
            last = r.g.call("slice", r.value(x), axis=info.axis, start=r.tokens - 1, end=r.tokens)
            r.new[id(node.output)] = last
            return [LAST], None
    raise _refuse(node, "selects positions other than all or the last")


def _concat(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    pos = _only_pos(node, infos)
    if node.attrs["axis"] % node.output.type.rank == pos.axis:
        raise _refuse(node, "joins along the positions")
    ins = [
        r.value(v) if isinstance(i, Pos) else r.localize(v, pos)
        for i, v in zip(infos, node.inputs, strict=True)
    ]
    return [pos], ins


def _embedding(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    table, ids = node.inputs
    t_info, i_info = infos
    if t_info == KNOWN:
        if i_info == LAST:
            return [LAST], [r.value(table), r.value(ids)]
        return [i_info], [r.value(table), r.value(ids)]
    if isinstance(t_info, Pos) and t_info.axis == 1 and i_info == KNOWN:
        # known rows of a table whose every row holds all positions (Falcon's key and value
        # heads picked from its fused projection): a gather beside the positions
        pos = Pos(ids.type.rank, t_info.outer, t_info.inner)
        return [pos], [r.value(table), r.value(ids)]
    # A gather of rows of a position-carrying table: only the last position may be selected.
    data = constant_data(r.src, ids) if i_info == KNOWN else None
    if (
        isinstance(t_info, Pos)
        and t_info == Pos(0)
        and data is not None
        and bool((data == r.capacity - 1).all())
    ):
        attrs = {"value": r.tokens - 1, "dtype": ids.dtype, "shape": list(ids.shape)}
        new_ids = r.g.add_node("constant", [], attrs, node.meta).output
        return [LAST], [r.value(table), new_ids]
    raise _refuse(node, "gathers positions other than the last")


def _matmul(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    a, b = node.inputs
    ins = [r.value(a), r.value(b)]
    if LAST in infos:
        if any(isinstance(i, Pos) for i in infos):
            raise _refuse(node, "combines the last position with all positions")
        return [LAST], ins
    rank = node.output.type.rank
    (ia, ib) = infos
    if isinstance(ia, Pos) and isinstance(ib, Pos):
        pa, pb = _aligned(ia, a.type.rank, rank), _aligned(ib, b.type.rank, rank)
        if pa != pb or pa.axis >= rank - 2:
            raise _refuse(node, "multiplies across positions (attention that is not fused?)")
        return [pa], ins
    if isinstance(ia, Pos):
        if ia.axis == a.type.rank - 1:
            raise _refuse(node, "contracts over the positions")
        pos = _aligned(ia, a.type.rank, rank)
    else:
        if ib.axis == b.type.rank - 2:
            raise _refuse(node, "contracts over the positions")
        pos = _aligned(ib, b.type.rank, rank)
    if pos.axis < rank - 2:  # a batch axis: the known operand must not span it
        other, info = (b, ib) if isinstance(ia, Pos) else (a, ia)
        axis = pos.axis - (rank - other.type.rank)
        if axis >= 0 and other.shape[axis] != 1:
            raise _refuse(node, "multiplies by a matrix per position")
    return [pos], ins


def _cumsum(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    (info,) = infos
    ins = [r.value(node.inputs[0])]
    if info == LAST:
        return [LAST], ins
    if node.attrs["axis"] % node.inputs[0].type.rank == info.axis:
        raise _refuse(node, "sums over the positions")
    return [info], ins


def _rotary(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    """rotary_embedding turns x at sequence position p by row p of its tables (the op's
    definition), so the step graph takes the tables' rows at the new positions."""
    x, cos, sin = node.inputs
    if infos[0] != Pos(1) or infos[1:] != [KNOWN, KNOWN]:
        raise _refuse(node, "turns positions by tables that depend on the inputs")
    axis = cos.type.rank - 2  # [seq, r/2] or [batch, seq, r/2]
    return [Pos(1)], [r.value(x), r.localize(cos, Pos(axis)), r.localize(sin, Pos(axis))]


def _attention(r: _Rebuild, node: Node, infos: list[Info]) -> tuple[list[Info], list[Value] | None]:
    q, k, v = node.inputs[:3]
    a = node.attrs
    if not a["causal"]:
        raise _refuse(node, "is not causal")
    if len(node.inputs) == 4:
        raise _refuse(node, "has a mask operand besides the causal mask")
    if any(i != Pos(1) for i in infos[:3]) or not (q.shape[1] == k.shape[1] == r.capacity):
        raise _refuse(node, "is not self-attention over the positions (cross-attention?)")
    heads, kv_heads = a["num_heads"], a["num_kv_heads"]
    b, _, e = k.shape
    cache = TensorType((b, kv_heads, r.capacity, e // kv_heads), k.dtype)
    k_name, v_name = cache_names(r.caches)
    r.caches += 1
    k_cache = r.g.add_input(k_name, cache)
    v_cache = r.g.add_input(v_name, cache)
    ins = [r.value(q), r.value(k), r.value(v), k_cache, v_cache, r.past_batch]
    new = r.g.add_node(
        "cached_attention",
        ins,
        {
            "num_heads": heads,
            "scale": a["scale"],
            "num_kv_heads": kv_heads,
            "window": a["window"],
            "alibi_slopes": a["alibi_slopes"],
        },
        node.meta,
        names=[r.g.fresh_name(node.output.name), f"{k_name}.next", f"{v_name}.next"],
    )
    r.cache_outputs += new.outputs[1:]
    r.new[id(node.output)] = new.outputs[0]
    return [Pos(1)], None


_RULES: dict[str, Rule] = {
    "layer_norm": _feature_axis,
    "rms_norm": _feature_axis,
    "linear": _feature_axis,
    "swiglu": _feature_axis,
    "rotary_embedding": _rotary,
    "cumsum": _cumsum,
    "softmax": _axis_attr,
    "log_softmax": _axis_attr,
    "transpose": _transpose,
    "reshape": _reshape,
    "expand": _expand,
    "slice": _slice,
    "concat": _concat,
    "embedding": _embedding,
    "matmul": _matmul,
    "attention": _attention,
}


def _check_source(graph: Graph) -> None:
    if len(graph.inputs) != 1 or graph.inputs[0].dtype not in ("i64", "i32"):
        given = ", ".join(f"%{v.name} {v.type}" for v in graph.inputs)
        raise InputError(
            f"kv-cache: expected one input, the token ids [batch, seq], got {given}; "
            "trace the model without attention masks or other inputs"
        )
    if graph.inputs[0].type.rank != 2 or graph.inputs[0].shape[1] < 2:
        raise InputError(
            f"kv-cache: token ids must be [batch, seq] with seq >= 2, got {graph.inputs[0].type}"
        )
    if len(graph.outputs) != 1:
        raise InputError(
            f"kv-cache: expected one output, the logits, got {len(graph.outputs)}; "
            "return the logits alone"
        )
    if any(n.op in ("cached_attention", "qkv_attention") for n in graph.nodes):
        raise InputError("kv-cache: run the pass on a graph with plain causal `attention` ops")
    if not any(n.op == "attention" for n in graph.nodes):
        softmax = sum(n.op == "softmax" for n in graph.nodes)
        why = f"{softmax} softmax left unfused: " if softmax else ""
        raise InputError(
            f"kv-cache: the graph has no fused attention ({why}fuse-attention has not run, or "
            "its scores are more than a scaled QKᵀ plus a mask or bias, e.g. soft-capped); the "
            "pass caches fused attention only"
        )


def _become(graph: Graph, new: Graph) -> None:
    """Make `graph` (the object the pass manager holds) the rebuilt graph."""
    graph.__dict__.update(new.__dict__)


@register_pass
class KvCache(Pass):
    """Derive the cached step graph (prefill or decode) of a causal LM traced at its capacity.

    `tokens` new tokens per call: 1 gives the decode graph, a prompt length the prefill graph.
    """

    name = "kv-cache"
    tokens: int = 1

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        _check_source(graph)
        capacity = graph.inputs[0].shape[1]
        if not 1 <= self.tokens <= capacity:
            raise InputError(
                f"kv-cache: tokens={self.tokens} must be between 1 and the capacity {capacity}"
            )
        new = _Rebuild(graph, self.tokens).run()
        Canonicalize().run(new, PassContext())
        _become(graph, new)
        return PassResult.of({"cached-attention": new.op_counts().get("cached_attention", 0)})


def derive_step_graphs(graph: Graph, prompt_tokens: int) -> tuple[Graph, Graph]:
    """(prefill, decode): the pass run with `tokens=prompt_tokens` and `tokens=1` on copies of
    `graph`; both share its weight tensors."""
    from cgc.passes.manager import run_passes

    prefill = run_passes(graph.copy(), f"kv-cache{{tokens={prompt_tokens}}}")
    decode = run_passes(graph.copy(), "kv-cache{tokens=1}")
    return prefill, decode
