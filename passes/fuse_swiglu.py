"""fuse-swiglu: the gated MLP input silu(x·w_gateᵀ) · (x·w_upᵀ) becomes one `swiglu` op.

    g = linear(x, w_gate), u = linear(x, w_up)        (each maybe viewed to another shape)
    out = silu(g) · u     or     (g · sigmoid(g)) · u

becomes `swiglu(x, w_gate, w_up)`, viewed as out was. Runs after fuse-linear; projections with
a bias stay as they are (Llama-style models have none). See cgc.ir.ops.swiglu for why this is
one op rather than silu and mul on a merged linear.
"""

from __future__ import annotations

from cgc.ir import Graph, Value
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Match, Op, Var, apply_patterns, rewrite
from cgc.passes.registry import register_pass

x, w_gate, w_up = Var("x"), Var("w_gate"), Var("w_up")
gate_product = Op.linear(x, w_gate, name="gate_product")
up_product = Op.linear(x, w_up, name="up_product")
gate = Alt(Op.reshape(gate_product, name="gate_view"), gate_product)
up = Alt(Op.reshape(up_product, name="up_view"), up_product)
activated = Alt(Op.silu(gate), gate * Op.sigmoid(gate))


def _views_agree(m: Match) -> bool:
    """both products have one shape and are viewed alike, and the result keeps it"""
    gate, up = (m[f"{s}_view"] if f"{s}_view" in m else m[f"{s}_product"] for s in ("gate", "up"))
    return (
        m["gate_product"].type == m["up_product"].type
        and gate.type == up.type == m.root.output.type
    )


@rewrite(activated * up, where=_views_agree)
def swiglu(m: Match, g: Graph) -> Value:
    """silu(x·w_gateᵀ) · (x·w_upᵀ) = swiglu(x, w_gate, w_up)"""
    out = g.call("swiglu", m["x"], m["w_gate"], m["w_up"])
    shape = m.root.output.shape
    return out if out.shape == shape else g.call("reshape", out, shape=list(shape))


@register_pass
class FuseSwiglu(Pass):
    """Fuse silu(x·w_gateᵀ) · (x·w_upᵀ) over two bias-free linears of one x into `swiglu`.

    silu may be written silu(g) or g·sigmoid(g); each product may be viewed to another shape
    (the same for both) before the gating.
    """

    name = "fuse-swiglu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, [swiglu], ctx))
