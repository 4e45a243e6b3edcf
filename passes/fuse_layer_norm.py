"""fuse-layer-norm: the mean/variance decomposition of layer norm becomes one `layer_norm` op."""

from __future__ import annotations

from cgc.ir import Graph, Value
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Const, Match, Op, Var, apply_patterns, rewrite
from cgc.passes.predicates import is_float, over_last_axis, positive
from cgc.passes.registry import register_pass

x, w, b = Var("x", where=is_float), Var("w"), Var("b")
eps = Const(name="eps", where=positive)

# d = x - mean(x); var = mean(d²) (or var(x) without Bessel's correction)
centred = x - Op.reduce_mean(x, where=over_last_axis)
variance = Alt(
    Op.reduce_mean(centred * centred, where=over_last_axis),
    Op.reduce_mean(centred**2.0, where=over_last_axis),
    Op.var(x, correction=0, where=over_last_axis),
)
# (x - mean) / √(var + ε), written with rsqrt, reciprocal(sqrt) or a division
normalized = Alt(
    Op.mul(centred, Op.rsqrt(variance + eps), name="normalized"),
    Op.mul(centred, Op.reciprocal(Op.sqrt(variance + eps)), name="normalized"),
    Op.div(centred, Op.sqrt(variance + eps), name="normalized"),
)


def _fits(m: Match) -> bool:
    """w and b are vectors over x's last axis and the result keeps x's type"""
    width = (m["x"].shape[-1],)
    return m.root.output.type == m["x"].type and all(
        m[p].shape == width and m[p].dtype == m["x"].dtype for p in ("w", "b") if p in m
    )


def _shared_only_by_norms(m: Match) -> bool:
    """no intermediate is used elsewhere, but the normalised x by other norms' scales"""
    inside = {id(n) for n in m.nodes}
    width = (m["x"].shape[-1],)
    for node in m.nodes[1:]:
        if m.graph is not None and node.output in m.graph.outputs:
            return False
        for user in node.output.users:
            if id(user) in inside:
                continue
            scales = user.op == "mul" and any(v.shape == width for v in user.inputs)
            if node.output is not m["normalized"] or not scales:
                return False
    return True


def _layer_norm(m: Match, g: Graph, *affine: str) -> Value:
    return g.call("layer_norm", m["x"], *(m[p] for p in affine), eps=m.number("eps"))


@rewrite(normalized * w + b, where=(_fits, _shared_only_by_norms), single_use=False)
def layer_norm_affine(m: Match, g: Graph) -> Value:
    """(x - mean) / √(var + ε) · w + b = layer_norm(x, w, b)"""
    return _layer_norm(m, g, "w", "b")


@rewrite(normalized * w, where=(_fits, _shared_only_by_norms), single_use=False)
def layer_norm_scale(m: Match, g: Graph) -> Value:
    """(x - mean) / √(var + ε) · w = layer_norm(x, w)"""
    return _layer_norm(m, g, "w")


@rewrite(normalized, where=(_fits, _shared_only_by_norms), single_use=False)
def layer_norm_plain(m: Match, g: Graph) -> Value:
    """(x - mean) / √(var + ε) = layer_norm(x)"""
    return _layer_norm(m, g)


RULES = [layer_norm_affine, layer_norm_scale, layer_norm_plain]


@register_pass
class FuseLayerNorm(Pass):
    """Fuse mean/variance/rsqrt layer-norm decompositions over the last axis into `layer_norm`.

    Accepts the variance as mean(d·d), mean(d**2) or var(x, correction=0), the normalisation as
    d·rsqrt(var+ε), d·reciprocal(sqrt(var+ε)) or d/sqrt(var+ε), then an optional scale w and
    shift b (vectors over the last axis). A layer norm with a shift but no scale stays unfused
    apart from its normalisation: layer_norm(x) + b. Norms of one x that share the
    normalisation (GPT-NeoX's two parallel ones) each become a `layer_norm`.
    """

    name = "fuse-layer-norm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, RULES, ctx))
