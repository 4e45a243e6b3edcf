"""fuse-rotary-embedding: rotary position embeddings on split heads become `rotary_embedding`.

The matched forms, on a 4-D x of heads ([b, h, t, d] as Llama, or [b, t, h, d] as GPT-J) whose
last axis holds the r rotated features:

    x·C + rotate_half(x)·S          rotate_half(x) = concat(-x[..., r/2:], x[..., :r/2])
    x·C + rotate_every_two(x)·S     rotate_every_two(x) = interleave(-x[..., 1::2], x[..., ::2])

optionally with partial rotation, concat(rotated(x[..., :r]), x[..., r:]). The tables C and S
must be known at compile time (the positions are): their data proves that each pair's two
features share one angle (C[..., i] = C[..., i + r/2], or C[..., 2i] = C[..., 2i+1]), that the
angle does not depend on the head, and which axis is the sequence. The result is
`rotary_embedding(x', cos, sin){num_heads, rotary_dim=r, interleaved}` on x' = x as [b, t,
h·d], with the [t, r/2] (or [b, t, r/2]) half-tables as new parameters, viewed back as x was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cgc.ir import Graph, Node, TensorType, Value
from cgc.passes.constants import constant_data
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Match, Op, Pattern, Rewrite, Var, apply_patterns, rewrite
from cgc.passes.registry import register_pass


def _last_axis(node: Node) -> bool:
    """along the last axis"""
    rank = node.outputs[0].type.rank
    return node.attrs["axis"] % rank == rank - 1


def _features(start: Callable[[int], int], end: Callable[[int], int], step: int):
    """A slice of the last axis whose bounds are functions of that axis' size d."""

    def check(node: Node) -> bool:
        d = node.inputs[0].shape[-1]
        a = node.attrs
        return _last_axis(node) and (a["start"], a["end"], a["step"]) == (start(d), end(d), step)

    return check


def _head_split(value: Value) -> bool:
    """a 4-D tensor of heads"""
    return value.type.rank == 4 and value.type.is_float


first_half = _features(lambda d: 0, lambda d: d // 2, 1)
first_half.__doc__ = "the first half of the last axis"
second_half = _features(lambda d: d // 2, lambda d: d, 1)
second_half.__doc__ = "the second half of the last axis"
evens = _features(lambda d: 0, lambda d: d, 2)
evens.__doc__ = "the even features of the last axis"
odds = _features(lambda d: 1, lambda d: d, 2)
odds.__doc__ = "the odd features of the last axis"


def _unit_axis_added(node: Node) -> bool:
    """a view adding a trailing axis of size 1"""
    return node.output.shape == node.inputs[0].shape + (1,)


def _pairs_merged(node: Node) -> bool:
    """a view merging the last two axes"""
    shape = node.inputs[0].shape
    return node.output.shape == shape[:-2] + (shape[-2] * shape[-1],)


def _rotation(x: Pattern) -> Pattern:
    """x·C + rotate(x)·S for both pairings; binds `half` for the rotate_half form."""
    rotate_half = Op.concat(
        -Op.slice(x, where=second_half), Op.slice(x, where=first_half), where=_last_axis
    )
    rotate_every_two = Op.reshape(
        Op.concat(
            Op.reshape(-Op.slice(x, where=odds), where=_unit_axis_added),
            Op.reshape(Op.slice(x, where=evens), where=_unit_axis_added),
            where=_last_axis,
        ),
        where=_pairs_merged,
    )
    cos, sin = Var("cos"), Var("sin")
    return Alt(
        Op.add(x * cos, Op.mul(rotate_half, sin, name="half")),
        Op.add(x * cos, Op.mul(rotate_every_two, sin)),
    )


x_head = Var("x_head", where=_head_split)
x_all = Var("x", where=_head_split)


def _leading(node: Node) -> bool:
    """the leading features of the last axis"""
    a = node.attrs
    return _last_axis(node) and a["start"] == 0 and a["step"] == 1


x_part = Op.slice(x_head, name="x", where=_leading)
partial = Op.concat(
    _rotation(x_part), Op.slice(x_head, name="x_pass", where=_last_axis), where=_last_axis
)


def _rest_follows(m: Match) -> bool:
    """the pass-through features are exactly those after the rotated ones"""
    r, d = m["x"].shape[-1], m["x_head"].shape[-1]
    a = m["x_pass"].producer.attrs
    return (a["start"], a["end"], a["step"]) == (r, d, 1)


def _keeps_type(m: Match) -> bool:
    """the result has the type of the rotated features (nothing broadcasts them)"""
    x = m["x_head"] if "x_head" in m else m["x"]
    return m.root.output.type == x.type


def _rules(tables: _Tables) -> list[Rewrite]:
    def proven(m: Match) -> bool:
        """the tables are known, give one angle per pair, and do not depend on the head"""
        return tables.layout(m) is not None

    @rewrite(partial, where=(_rest_follows, _keeps_type, proven))
    def rotary_partial(m: Match, g: Graph) -> Value:
        """concat(x[..., :r]·C + rotate(x[..., :r])·S, x[..., r:]) = rotary_embedding(x)"""
        return tables.replace(m, g, m["x_head"])

    @rewrite(_rotation(x_all), where=(_keeps_type, proven))
    def rotary(m: Match, g: Graph) -> Value:
        """x·C + rotate(x)·S = rotary_embedding(x)"""
        return tables.replace(m, g, m["x"])

    return [rotary_partial, rotary]


class _Tables:
    """Reads C and S of a match, and keeps the half-tables made so far (q and k, every layer)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.made: list[tuple[torch.Tensor, Value]] = []
        self.data: dict[int, torch.Tensor | None] = {}

    def _data(self, value: Value) -> torch.Tensor | None:
        if id(value) not in self.data:
            self.data[id(value)] = constant_data(self.graph, value)
        return self.data[id(value)]

    def layout(self, m: Match) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """(sequence axis, cos half-table, sin half-table), or None when not proven."""
        x = m["x"]
        full = []
        for name in ("cos", "sin"):
            data = self._data(m[name])
            if data is None:
                return None
            try:
                full.append(data.broadcast_to(x.shape))
            except RuntimeError:
                return None
        cos, sin = full
        r = x.shape[-1]
        if "half" in m:
            halves = [(t[..., : r // 2], t[..., r // 2 :]) for t in (cos, sin)]
        else:
            halves = [(t[..., 0::2], t[..., 1::2]) for t in (cos, sin)]
        if not all(torch.equal(a, b) for a, b in halves):
            return None
        cos, sin = halves[0][0], halves[1][0]
        varies = [
            not torch.equal(t, t.narrow(axis, 0, 1).expand_as(t))
            for axis in (1, 2)
            for t in (cos, sin)
        ]
        along_1, along_2 = varies[0] or varies[1], varies[2] or varies[3]
        if along_1 and along_2:
            return None  # the angle depends on the head
        seq = 1 if along_1 else 2  # [b, t, h, d] or [b, h, t, d]; either when constant
        return seq, cos, sin

    def table(self, data: torch.Tensor, hint: str) -> Value:
        """A parameter holding `data`; equal tables share one."""
        for other, value in self.made:
            if other.dtype == data.dtype and other.shape == data.shape and torch.equal(other, data):
                return value
        data = data.contiguous()
        value = self.graph.add_param(self.graph.fresh_name(hint), TensorType.of(data), data)
        self.made.append((data, value))
        return value

    def replace(self, m: Match, g: Graph, x_head: Value) -> Value:
        seq, cos, sin = self.layout(m)
        heads_axis = 3 - seq
        perm = [0, seq, heads_axis, 3]
        b, t, h, d = (x_head.shape[i] for i in perm)
        x = x_head if perm == [0, 1, 2, 3] else g.call("transpose", x_head, perm=perm)
        x = g.call("reshape", x, shape=[b, t, h * d])

        def half_table(data: torch.Tensor, hint: str) -> Value:
            data = data.narrow(heads_axis, 0, 1).squeeze(heads_axis)  # [b|1, t, r/2]
            if data.shape[0] == 1 or torch.equal(data, data[:1].expand_as(data)):
                data = data[0]
            return self.table(data, hint)

        tables = half_table(cos, "rotary_cos"), half_table(sin, "rotary_sin")
        y = g.call(
            "rotary_embedding",
            x,
            *tables,
            num_heads=h,
            rotary_dim=m["x"].shape[-1],
            interleaved="half" not in m,
        )
        y = g.call("reshape", y, shape=[b, t, h, d])
        return y if perm == [0, 1, 2, 3] else g.call("transpose", y, perm=perm)


@register_pass
class FuseRotaryEmbedding(Pass):
    """Fuse rotary position embeddings on split heads into `rotary_embedding`.

    Matches x·C + rotate_half(x)·S (GPT-NeoX, Llama) and x·C + rotate_every_two(x)·S (GPT-J),
    on all of each head's features or, with the rest concatenated unchanged, on the leading
    rotary_dim. Fires only when the cos and sin tables are known at compile time and their data
    shows one angle per pair, independent of the head; the half-tables become parameters.
    """

    name = "fuse-rotary-embedding"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, _rules(_Tables(graph)), ctx))
