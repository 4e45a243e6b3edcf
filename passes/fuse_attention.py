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
from cgc.ir.ops.nn import causal_keep
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
    constant_number,
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


def _is_heads(value: Value) -> bool:
    """[b, heads, s, d] heads, or [b·heads, s, d] (a batch of single heads)"""
    return value.type.rank in (3, 4)


def _swaps_last_two(perm: list[int]) -> bool:
    """a transpose of the last two axes"""
    n = len(perm)
    return n >= 3 and list(perm) == [*range(n - 2), n - 1, n - 2]


def _repeated(heads: Pattern, site: str) -> Pattern:
    """Heads repeated for grouped queries: view [b,n,1,s,d], expand [b,n,r,s,d], view."""
    unsqueezed = Op.reshape(heads, name=f"{site}_unsqueezed")
    return Op.reshape(Op.expand(unsqueezed, name=f"{site}_expanded"), name=f"{site}_repeated")


def _own_heads(x: Var, site: str) -> Pattern:
    """x's heads [b, n, s, d]: the head split of [b, s, n·d] x, or any 4-D value."""
    return Alt(Op.transpose(_split(x, site), perm=[0, 2, 1, 3]), Var(f"{site}_h", where=_is_heads))


def _heads(x: Var, site: str) -> Pattern:
    own = _own_heads(x, site)
    return Alt(_repeated(own, site), own)


q, k, v = Var("q"), Var("k"), Var("v")
q_heads = _scaled(_own_heads(q, "q"), "q_heads")
# shared heads transposed while repeated (torch.onnx's decomposition of SDPA)
k_repeated_t = Op.reshape(
    Op.transpose(
        Op.expand(Op.reshape(_own_heads(k, "k"), name="k_unsqueezed"), name="k_expanded"),
        perm=_swaps_last_two,
        name="k_transposed",
    ),
    name="k_repeated",
)
k_heads_t = _scaled(
    Alt(
        Op.transpose(_split(k, "k"), perm=[0, 2, 3, 1]),
        Op.transpose(_scaled(_heads(k, "k"), "k_heads"), perm=_swaps_last_two),
        k_repeated_t,
        Var("k_ht", where=_is_heads),  # [b, n, d, s], transposed elsewhere
    ),
    "k_t",
)
v_heads = _heads(v, "v")
scores = _scaled(Op.matmul(q_heads, k_heads_t, name="qk"), "scores")


def _own_shape(m: Match, site: str) -> tuple[int, int, int, int]:
    """[batch, heads, seq, d_head] of q's, k's or v's own heads (before any repeat)."""
    if f"{site}_split" in m:
        b, s, n, d = m[f"{site}_split"].shape
        return b, n, s, d
    keys_t = site == "k" and "k_ht" in m
    heads = m["k_ht"] if keys_t else m[f"{site}_h"]
    shape = heads.shape if heads.type.rank == 4 else (heads.shape[0], 1, *heads.shape[1:])
    if keys_t:
        b, n, d, s = shape
        return b, n, s, d
    return shape


def _repeat_fits(m: Match, site: str) -> bool:
    """No repeat, or one that gives each of x's n heads r consecutive copies."""
    if f"{site}_repeated" not in m:
        return True
    b, n, s, d = _own_shape(m, site)
    r = m[f"{site}_expanded"].shape[2]
    last = (d, s) if f"{site}_transposed" in m else (s, d)
    return (
        m[f"{site}_unsqueezed"].shape == (b, n, 1, s, d)
        and m[f"{site}_expanded"].shape == (b, n, r, s, d)
        and m[f"{site}_repeated"].shape == (b, n * r, *last)
    )


def _heads_agree(m: Match) -> bool:
    """q, k and v share the batch, and k and v a number of heads that divides q's"""
    b, heads, t, d = _own_shape(m, "q")
    kb, kv_heads, s, kd = _own_shape(m, "k")
    vb, v_heads, vs, _ = _own_shape(m, "v")
    return (
        b == kb == vb
        and d == kd
        and s == vs
        and kv_heads == v_heads
        and heads % kv_heads == 0
        and all(_repeat_fits(m, site) for site in "kv")
    )


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
    sites = ("where_masked", "masked", "masked_2")
    return all(m[x].type == m["qk"].type for x in sites if x in m)


def _additive(g: Graph, m: Match, keep: Value | None, fill: float) -> Value:
    """A where-mask as an additive mask: 0 where scores are kept, the fill where masked (where
    `keep` holds, or where m's `drop` does not)."""
    dtype = m["qk"].dtype
    zero, fill_value = g.constant(0.0, dtype), g.constant(fill, dtype)
    if keep is not None:
        return g.call("where", keep, zero, fill_value)
    return g.call("where", m["drop"], fill_value, zero)


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


def _operand(g: Graph, m: Match, site: str) -> Value:
    """q, k or v as the [b, s, n·d] value the fused op takes."""
    b, n, s, d = _own_shape(m, site)
    if f"{site}_split" in m:
        return _reshaped(g, m[site], (b, s, n * d))
    heads = m["k_ht"] if site == "k" and "k_ht" in m else m[f"{site}_h"]
    if heads.type.rank == 3:  # single heads: [b, s, d] already, or [b, d, s] keys
        return (
            g.call("transpose", heads, perm=[0, 2, 1]) if heads is m.values.get("k_ht") else heads
        )
    perm = [0, 3, 1, 2] if heads is m.values.get("k_ht") else [0, 2, 1, 3]
    return _reshaped(g, g.call("transpose", heads, perm=perm), (b, s, n * d))


class _Masks:
    """What the masks of a match say: `causal`, `window`, `alibi_slopes`, and the rest as one
    additive mask operand. Data decides: only masks known at compile time turn into attrs."""

    def __init__(self, g: Graph, m: Match, large_negative: float) -> None:
        self.g, self.m, self.large_negative = g, m, large_negative
        b, self.heads, self.t, _ = _own_shape(m, "q")
        self.s = _own_shape(m, "k")[2]
        self.causal, self.window, self.alibi_slopes = False, 0, []
        self.operands: list[Value] = []

    def _data(self, value: Value) -> torch.Tensor | None:
        """The mask's data as [b, heads, t, s], None when it is not known."""
        data = constant_data(self.g, value)
        if data is None:
            return None
        try:
            data = data.broadcast_to(self.m["qk"].shape)
        except RuntimeError:
            return None
        return data.reshape(-1, self.heads, self.t, self.s)

    def _causal_window(self, keep: torch.Tensor) -> int | None:
        """The window of a causal keep-mask (0: all earlier keys), None if not causal."""
        first = keep[0, 0]
        if not bool((keep == first).all()):
            return None
        full = causal_keep(self.t, self.s)
        if torch.equal(first, full):
            return 0
        window = int(first[-1].sum())
        if not 0 < window < self.s:
            return None
        return window if torch.equal(first, causal_keep(self.t, self.s, window)) else None

    def _add_causal(self, window: int) -> None:
        windows = [w for w in (self.window, window) if w]
        self.window = min(windows) if windows else 0
        self.causal = True

    def where_mask(self) -> None:
        """The where(keep, s, fill) or where(drop, fill, s) mask; keep may be a conjunction."""
        m, g = self.m, self.g
        if "drop" in m:
            data = self._data(m["drop"])
            window = None if data is None else self._causal_window(~data)
            if window is None:
                self.operands.append(_additive(g, m, None, m.number("fill")))
            else:
                self._add_causal(window)
            return
        keep = self._causal_part(m["keep"], m.number("fill"))
        if keep is not None:
            self.operands.append(_additive(g, m, keep, m.number("fill")))

    def _causal_part(self, keep: Value, fill: float) -> Value | None:
        """Takes the causal conjuncts of keep (known causal or sliding-window masks) into the
        attrs; returns the conjunction of the others, None when none is left.

        Only a -∞ fill splits: with a finite one, a query that the other conjuncts mask
        entirely attends evenly to every key, which the split would change.
        """
        conjuncts = _conjuncts(keep) if fill == float("-inf") else [keep]
        rest = []
        for conjunct in conjuncts:
            data = self._data(conjunct)
            window = None if data is None else self._causal_window(data)
            if window is None:
                rest.append(conjunct)
            else:
                self._add_causal(window)
        if not rest or rest == [keep]:
            return keep if rest else None
        keep = rest[0]
        for other in rest[1:]:
            keep = self.g.call("logical_and", keep, other)
        return keep

    def additive(self, mask: Value) -> None:
        """An added mask: causal (0 / very negative), ALiBi (linear in the key), or kept."""
        data = self._data(mask)
        if data is not None:
            kept = data > self.large_negative
            if bool(((data == 0) | ~kept).all()):
                window = self._causal_window(kept)
                if window is not None:
                    self._add_causal(window)
                    return
            slopes = self._alibi(data)
            if slopes is not None:
                if any(slopes):
                    self.alibi_slopes = slopes
                return
        where = mask.producer
        if where is not None and where.op == "where" and where.inputs[0].dtype == "bool":
            # where(keep, 0, fill): a padding mask built from the inputs, maybe and-ed with a
            # causal one; the causal part becomes the attrs
            zero = constant_number(where.inputs[1], self.g)
            fill = constant_number(where.inputs[2], self.g)
            if zero == 0 and fill is not None and fill <= self.large_negative:
                keep = self._causal_part(where.inputs[0], fill)
                if keep is not where.inputs[0]:
                    if keep is not None:
                        self.operands.append(_additive(self.g, self.m, keep, fill))
                    return
        self.operands.append(mask)

    def _alibi(self, data: torch.Tensor) -> list[float] | None:
        """Per-head slopes when the mask is slope_h · key + a constant per query, else None.

        The constant per query is what softmax ignores, so the mask is ALiBi's bias then.
        """
        if self.alibi_slopes or self.s < 2 or not bool(data.isfinite().all()):
            return None
        if not bool((data == data[:1]).all()):
            return None  # differs across the batch
        head = data[0].double()  # [h, t, s]
        slopes = (head[:, 0, -1] - head[:, 0, 0]) / (self.s - 1)
        keys = torch.arange(self.s, dtype=torch.float64)
        fitted = head[..., :1] + slopes[:, None, None] * keys
        if not bool(((head - fitted).abs() <= 1e-5 * head.abs().clamp(min=1.0)).all()):
            return None
        return [float(x) for x in slopes]


def _conjuncts(keep: Value) -> list[Value]:
    """The operands of a chain of logical_and nodes (keep itself when it is none)."""
    node = keep.producer
    if node is None or node.op != "logical_and":
        return [keep]
    return [c for x in node.inputs for c in _conjuncts(x)]


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
    masked = Alt(
        Op.add(Op.add(where_masked, Var("mask"), name="masked"), Var("mask_2"), name="masked_2"),
        Op.add(where_masked, Var("mask"), name="masked"),
        where_masked,
    )
    probs = Op.softmax(masked, where=_softmax_last, name="probs")
    guarded = Alt(Op.where(Op.ne(probs, probs), 0.0, probs, name="nan_guard"), probs)
    context = Op.matmul(guarded, v_heads, name="context")
    pattern = Alt(Op.reshape(Op.transpose(context, perm=[0, 2, 1, 3])), context)

    @rewrite(pattern, where=(_heads_agree, _scales_keep_types, _masks_keep_type))
    def attention(m: Match, g: Graph) -> Value:
        """reshape(transpose(softmax(mask(q_h·kᵀ·c))·v_h)) = attention(q, k, v)"""
        operands = [_operand(g, m, x) for x in "qkv"]
        b, heads, t, _ = _own_shape(m, "q")
        # The fused op takes the softmax's scope and line: the root may be a view that
        # canonicalize merged with the next module's flatten, and carry that module's scope.
        with g.inserting_before(m.root, m["probs"].producer.meta):
            masks = _Masks(g, m, large_negative)
            if "where_masked" in m:
                masks.where_mask()
            for name in ("mask", "mask_2"):
                if name in m:
                    masks.additive(m[name])
            if masks.operands:
                mask = masks.operands[0]
                for other in masks.operands[1:]:
                    mask = g.call("add", mask, other)
                if mask.type.rank == 3 and m["qk"].type.rank == 3:  # [b, t, s]: one head each
                    mask = g.call("reshape", mask, shape=[mask.shape[0], 1, *mask.shape[1:]])
                operands.append(mask)
            out = g.call(
                "attention",
                *operands,
                num_heads=heads,
                num_kv_heads=_own_shape(m, "k")[1],
                causal=masks.causal,
                scale=_scale(m),
                window=masks.window,
                alibi_slopes=masks.alibi_slopes,
            )
            if m.root is m["context"].producer and m.root.output.type.rank == 4:  # unmerged
                out = g.call("reshape", out, shape=[b, t, heads, out.shape[-1] // heads])
                return g.call("transpose", out, perm=[0, 2, 1, 3])
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
