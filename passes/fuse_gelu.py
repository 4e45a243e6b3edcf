"""fuse-gelu: the erf and tanh formulas of GELU become one `gelu` op."""

from __future__ import annotations

import math

from cgc.ir import Graph, Value
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Const, Match, Op, Pattern, Var, apply_patterns, rewrite
from cgc.passes.predicates import is_float
from cgc.passes.registry import register_pass

x = Var("x", where=is_float)


def _half_x_times(t: Pattern) -> Pattern:
    """0.5·x·t with the 0.5 on either factor or on the product."""
    return Alt((x * 0.5) * t, x * (t * 0.5), (x * t) * 0.5)


# 1 + erf(x/√2), the division written as ·(1/√2) or /√2
erf_term = 1.0 + Op.erf(Alt(x * Const(approx=1 / math.sqrt(2)), x / Const(approx=math.sqrt(2))))
# 1 + tanh(√(2/π)·(x + 0.044715·x³)), the cube written as x**3 or x·x·x, or factored as
# √(2/π)·x·(1 + 0.044715·x²) (BLOOM)
cube = Alt(x**3.0, x * x * x)
square = Alt(x * x, x**2.0)
c_tanh, c_cube = Const(approx=math.sqrt(2 / math.pi)), Const(approx=0.044715)
tanh_term = 1.0 + Op.tanh(
    Alt(
        c_tanh * (x + c_cube * cube),
        (c_tanh * x) * (1.0 + Alt(c_cube * square, (c_cube * x) * x)),
    )
)


def _keeps_type(m: Match) -> bool:
    """the result has the type of x"""
    return m.root.output.type == m["x"].type


@rewrite(_half_x_times(erf_term), where=_keeps_type)
def gelu_erf(m: Match, g: Graph) -> Value:
    """0.5·x·(1 + erf(x/√2)) = gelu(x)"""
    return g.call("gelu", m["x"], approximate="none")


@rewrite(_half_x_times(tanh_term), where=_keeps_type)
def gelu_tanh(m: Match, g: Graph) -> Value:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) = gelu(x, approximate="tanh")"""
    return g.call("gelu", m["x"], approximate="tanh")


RULES = [gelu_erf, gelu_tanh]


@register_pass
class FuseGelu(Pass):
    """Fuse the erf and tanh forms of GELU into `gelu` {approximate="none" | "tanh"}.

    The tanh form's inner term may be √(2/π)·(x + 0.044715·x³) or √(2/π)·x·(1 + 0.044715·x²).
    Constants match within a relative tolerance of 1e-6 (f32 rounding of 1/√2, √2, √(2/π) and
    0.044715); the 0.5 may multiply x, the bracket, or the product.
    """

    name = "fuse-gelu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, RULES, ctx))
