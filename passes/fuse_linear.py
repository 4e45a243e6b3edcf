"""fuse-linear: a matrix product with a weight parameter, plus bias, becomes one `linear` op."""

from __future__ import annotations

from math import prod

from cgc.ir import Graph, Value
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Match, Op, Pattern, Rewrite, Var, apply_patterns, rewrite
from cgc.passes.registry import register_pass


def _is_matrix_param(value: Value) -> bool:
    """a 2-D weight (a parameter or graph input, not a computed value)"""
    return value.producer is None and value.type.rank == 2


x, b = Var("x"), Var("b")
# The weight as torch stores it, [out, in] and transposed at use, or HF Conv1D's [in, out].
w, w_in_out = Var("w", where=_is_matrix_param), Var("w_in_out", where=_is_matrix_param)
weight_t = Op.transpose(w, perm=[1, 0])


def _flattens_x(m: Match) -> bool:
    """x [..., in] is viewed as [N, in] and the result viewed back as [..., out]"""
    flat, xs = m["flat"].shape, m["x"].shape
    out = m.root.output.shape
    return len(xs) > 2 and flat == (prod(xs[:-1]), xs[-1]) and out[:-1] == xs[:-1]


def _bias_fits(m: Match) -> bool:
    """b is a vector over the output features, added without broadcasting the product"""
    bias = m["b"]
    return bias.type.rank == 1 and m["xw"].type == m["xwb"].type and bias.dtype == m["xw"].dtype


def _linear(m: Match, g: Graph) -> Value:
    weight = m["w"] if "w" in m else g.call("transpose", m["w_in_out"], perm=[1, 0])
    bias = [m["b"]] if "b" in m else []
    return g.call("linear", m["x"], weight, *bias)


def _rules(in_out: bool) -> list[Rewrite]:
    weight = Alt(weight_t, w_in_out) if in_out else weight_t

    def product(a: Pattern) -> Pattern:
        return Op.matmul(a, weight, name="xw")

    flat_x = Op.reshape(x, name="flat")

    @rewrite(Op.reshape(Op.add(product(flat_x), b, name="xwb")), where=(_bias_fits, _flattens_x))
    def linear_bias_flattened(m: Match, g: Graph) -> Value:
        """view(view(x, [N, in])·wᵀ + b, [..., out]) = linear(x, w, b)"""
        return _linear(m, g)

    @rewrite(Op.reshape(product(flat_x)), where=_flattens_x)
    def linear_flattened(m: Match, g: Graph) -> Value:
        """view(view(x, [N, in])·wᵀ, [..., out]) = linear(x, w)"""
        return _linear(m, g)

    @rewrite(Op.add(product(x), b, name="xwb"), where=_bias_fits)
    def linear_bias(m: Match, g: Graph) -> Value:
        """x·wᵀ + b = linear(x, w, b)"""
        return _linear(m, g)

    @rewrite(product(x))
    def linear(m: Match, g: Graph) -> Value:
        """x·wᵀ = linear(x, w)"""
        return _linear(m, g)

    return [linear_bias_flattened, linear_flattened, linear_bias, linear]


@register_pass
class FuseLinear(Pass):
    """Fuse matmul(x, transpose(w)) [+ b] with a 2-D weight parameter w into `linear(x, w, b)`.

    The flatten/unflatten reshapes that addmm imports as are absorbed. With `in_out_weights`,
    a matmul with an [in, out] weight (Hugging Face Conv1D) fuses too, through an explicit
    transpose(w); canonicalize then stores such a weight transposed when it has data (real or
    meta), and a weight without data keeps the transpose for the backend.
    """

    name = "fuse-linear"
    in_out_weights: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, _rules(self.in_out_weights), ctx))
