"""fuse-attention: scaled dot-product attention subgraphs become one `attention` op.

The matched form, every piece optional where marked:

    q_h = transpose(reshape(q [b,t,h·d], [b,t,h,d]), [0,2,1,3])            (v_h alike)
    kᵀ  = transpose(reshape(k), [0,2,3,1])
       or transpose(transpose(reshape(k), [0,2,1,3]), [0,1,3,2])
    s   = (q_h · kᵀ) · c            c: ·c or /c on q, q_h, k, k_h, kᵀ or the scores
    s   = where(keep, s, -∞) or where(drop, -∞, s)                           (optional)
    s   = s + mask                                                          (optional)
    p   = softmax(s, -1), then where(isnan(p), 0, p)                         (optional)
    out = reshape(transpose(p · v_h, [0,2,1,3]), [b,t,h·d])

becomes `attention(q, k, v){num_heads=h, causal, scale=∏c}` on the [b,t,h·d] values before the
head split. Views compose, so a split may start from any shape (reshaped to [b,t,h·d] first)
and the merge may end in any shape (the fused output is reshaped to it): canonicalize folds
view chains such as the merge followed by the next linear's [b·t, e] flatten.

A mask known at compile time to be causal (a where keeping the lower triangle, or an additive
0 / very negative one) sets `causal`; any other mask becomes the op's additive `mask` operand (a
where-mask as where(keep, 0, fill), so padding masks built from the inputs fuse too). The NaN
guard (torch SDPA as cgc or torch.onnx imports it, with isnan as x != x) zeroes the weights of
a query whose every score is masked; the attention op does the same, so the guard is absorbed.
"""

from __future__ import annotations

import math

import torch

from cgc.ir import Graph, Node, Value
from cgc.passes.constants import constant_data
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import (
    Alt,
    Const,
    Match,
    Op,
    Pattern,
    Rewrite,
    Var,
    apply_patterns,
    rewrite,
)
from cgc.passes.registry import register_pass

# Where a constant factor on the scores may sit (q·c)·kᵀ = q·(k·c)ᵀ = (q·kᵀ)·c.
SCALE_SITES = ("q_in", "q_heads", "k_in", "k_heads", "k_t", "scores")


def _finite_nonzero(number: float) -> bool:
    """a finite non-zero factor"""
    return math.isfinite(number) and number != 0


def _scaled(p: Pattern, site: str) -> Pattern:
    """p·c, p/c or p; the scaling node binds as `site`, its constant as `site`_c.

    Scaled forms come first so that a factor on q or k joins `scale` rather than q or k.
    """
    c = Const(name=f"{site}_c", where=_finite_nonzero)
    return Alt(Op.mul(p, c, name=site), Op.div(p, c, name=site), p)


def _softmax_last(node: Node) -> bool:
    """a softmax over the last (key) axis"""
    return node.attrs["axis"] % node.inputs[0].type.rank == node.inputs[0].type.rank - 1


def _split(x: Var, site: str) -> Pattern:
    return Op.reshape(_scaled(x, f"{site}_in"), name=f"{site}_split")


q, k, v = Var("q"), Var("k"), Var("v")
q_heads = _scaled(Op.transpose(_split(q, "q"), perm=[0, 2, 1, 3]), "q_heads")
k_heads_t = _scaled(
    Alt(
        Op.transpose(_split(k, "k"), perm=[0, 2, 3, 1]),
        Op.transpose(
            _scaled(Op.transpose(_split(k, "k"), perm=[0, 2, 1, 3]), "k_heads"), perm=[0, 1, 3, 2]
        ),
    ),
    "k_t",
)
v_heads = Op.transpose(Op.reshape(v, name="v_split"), perm=[0, 2, 1, 3])
scores = _scaled(Op.matmul(q_heads, k_heads_t, name="qk"), "scores")


def _heads_agree(m: Match) -> bool:
    """q, k and v split into the same batch and number of heads"""
    splits = [m[f"{x}_split"].shape for x in "qkv"]
    return len({(s[0], s[2]) for s in splits}) == 1


def _scales_keep_types(m: Match) -> bool:
    """every constant factor keeps the type of what it scales (no broadcasting)"""
    for site in SCALE_SITES:
        if site in m:
            node, c = m[site].producer, m[f"{site}_c"]
            scaled = node.inputs[1] if node.inputs[0] is c else node.inputs[0]
            if scaled.type != node.output.type:
                return False
    return True


def _masks_keep_type(m: Match) -> bool:
    """the masks do not broadcast the scores to a larger shape"""
    return all(m[x].type == m["qk"].type for x in ("where_masked", "masked") if x in m)


def _causal_keep(m: Match) -> torch.Tensor:
    """Which scores a causal mask keeps: key j ≤ query i, aligned to the end of the keys."""
    t, s = m["q_split"].shape[1], m["k_split"].shape[1]
    return torch.ones(t, s, dtype=torch.bool).tril(s - t)


def _where_mask_causal(m: Match) -> bool:
    """Whether the where-mask is known at compile time and keeps exactly the causal triangle."""
    name = "keep" if "keep" in m else "drop"
    data = constant_data(m.graph, m[name]) if m.graph is not None else None
    if data is None:
        return False
    keep = _causal_keep(m)
    return bool((data == (keep if name == "keep" else ~keep)).all())


def _additive(g: Graph, m: Match) -> Value:
    """The where-mask as an additive mask: 0 where scores are kept, the fill where masked."""
    dtype = m["qk"].dtype
    zero, fill = g.constant(0.0, dtype), g.constant(m.number("fill"), dtype)
    if "keep" in m:
        return g.call("where", m["keep"], zero, fill)
    return g.call("where", m["drop"], fill, zero)


def _scale(m: Match) -> float:
    """The product of every constant factor on the scores."""
    scale = 1.0
    for site in SCALE_SITES:
        if site in m:
            c = m.number(f"{site}_c")
            scale *= c if m[site].producer.op == "mul" else 1.0 / c
    return scale


def _reshaped(g: Graph, value: Value, shape: tuple[int, ...]) -> Value:
    return value if value.shape == shape else g.call("reshape", value, shape=list(shape))


def _merged(g: Graph, value: Value, split: Value) -> Value:
    """`value` as the [b, t, h·d] tensor its head split [b, t, h, d] views."""
    b, t, h, d = split.shape
    return _reshaped(g, value, (b, t, h * d))


def attention_rule(large_negative: float = -1e4) -> Rewrite:
    """The attention rewrite; masked scores at or below `large_negative` count as -∞."""

    def very_negative(number: float) -> bool:
        return number <= large_negative

    very_negative.__doc__ = f"a mask fill at or below {large_negative:g}"
    fill = Const(name="fill", where=very_negative)
    where_masked = Alt(
        scores,
        Op.where(Var("keep"), scores, fill, name="where_masked"),
        Op.where(Var("drop"), fill, scores, name="where_masked"),
    )
    masked = Alt(where_masked, Op.add(where_masked, Var("mask"), name="masked"))
    probs = Op.softmax(masked, where=_softmax_last, name="probs")
    guarded = Alt(Op.where(Op.ne(probs, probs), 0.0, probs, name="nan_guard"), probs)
    context = Op.matmul(guarded, v_heads)
    pattern = Op.reshape(Op.transpose(context, perm=[0, 2, 1, 3]))

    def additive_mask_causal(m: Match) -> bool:
        data = constant_data(m.graph, m["mask"]) if m.graph is not None else None
        if data is None:
            return False
        keep = _causal_keep(m)
        return bool(torch.where(keep, data == 0, data <= large_negative).all())

    @rewrite(pattern, where=(_heads_agree, _scales_keep_types, _masks_keep_type))
    def attention(m: Match, g: Graph) -> Value:
        """reshape(transpose(softmax(mask(q_h·kᵀ·c))·v_h)) = attention(q, k, v)"""
        operands = [_merged(g, m[x], m[f"{x}_split"]) for x in "qkv"]
        heads = m["q_split"].shape[2]
        causal, masks = False, []
        # The fused op takes the softmax's scope and line: the root may be a view that
        # canonicalize merged with the next module's flatten, and carry that module's scope.
        with g.inserting_before(m.root, m["probs"].producer.meta):
            if "where_masked" in m:
                causal = _where_mask_causal(m)
                if not causal:
                    masks.append(_additive(g, m))
            if "mask" in m:
                if additive_mask_causal(m):
                    causal = True
                else:
                    masks.append(m["mask"])
            if masks:
                operands.append(masks[0] if len(masks) == 1 else g.call("add", *masks))
            out = g.call("attention", *operands, num_heads=heads, causal=causal, scale=_scale(m))
        return _reshaped(g, out, m.root.output.shape)

    return attention


@register_pass
class FuseAttention(Pass):
    """Fuse scaled dot-product attention (split heads, q·kᵀ, scale, mask, softmax, ·v, merge).

    The result is `attention(q, k, v[, mask]){num_heads, causal, scale}` on [batch, seq,
    heads·d_head] values. Scaling may be a mul or div by any constant on q, k or the scores
    (scale = their product); masks may be added, or applied with where in either polarity
    with a fill at or below `large_negative`. Masks known to be causal set `causal`; others,
    including masks computed from the inputs (padding), become the `mask` operand. A NaN guard
    on the softmax, where(isnan(p), 0, p), is absorbed. Nothing fuses if an intermediate (say
    the attention weights) is used outside the subgraph.
    """

    name = "fuse-attention"
    large_negative: float = -1e4

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, [attention_rule(self.large_negative)], ctx))
