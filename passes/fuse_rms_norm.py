"""fuse-rms-norm: the root-mean-square normalisation of Llama-style models becomes `rms_norm`."""

from __future__ import annotations

from cgc.ir import Graph, Value
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Const, Match, Op, Var, apply_patterns, rewrite
from cgc.passes.predicates import is_float, over_last_axis, positive
from cgc.passes.registry import register_pass

x, w = Var("x", where=is_float), Var("w")
eps = Const(name="eps", where=positive)

# mean(x²) + ε over the last axis, the square written x·x or x**2
mean_square = (
    Alt(
        Op.reduce_mean(x * x, where=over_last_axis),
        Op.reduce_mean(x**2.0, where=over_last_axis),
    )
    + eps
)
# x / √(mean(x²) + ε), written with rsqrt, reciprocal(sqrt) or a division
normalized = Alt(
    x * Op.rsqrt(mean_square),
    x * Op.reciprocal(Op.sqrt(mean_square)),
    x / Op.sqrt(mean_square),
)


def _fits(m: Match) -> bool:
    """w is a vector over x's last axis and the result keeps x's type"""
    x = m["x"]
    return m.root.output.type == x.type and (
        "w" not in m or (m["w"].shape == (x.shape[-1],) and m["w"].dtype == x.dtype)
    )


@rewrite(normalized * w, where=_fits)
def rms_norm_scale(m: Match, g: Graph) -> Value:
    """x / √(mean(x²) + ε) · w = rms_norm(x, w)"""
    return g.call("rms_norm", m["x"], m["w"], eps=m.number("eps"))


@rewrite(normalized, where=_fits)
def rms_norm_plain(m: Match, g: Graph) -> Value:
    """x / √(mean(x²) + ε) = rms_norm(x)"""
    return g.call("rms_norm", m["x"], eps=m.number("eps"))


RULES = [rms_norm_scale, rms_norm_plain]


@register_pass
class FuseRmsNorm(Pass):
    """Fuse x / √(mean(x²) + ε) over the last axis, then an optional scale w, into `rms_norm`.

    The square may be x·x or x**2, the normalisation x·rsqrt(·), x·reciprocal(sqrt(·)) or
    x / sqrt(·); w is a vector over the last axis (multiplied on either side).
    """

    name = "fuse-rms-norm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, RULES, ctx))
