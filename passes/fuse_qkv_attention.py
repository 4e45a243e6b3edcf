"""fuse-qkv-attention: attention on the thirds of one packed projection becomes `qkv_attention`.

    qkv = linear(x, w[, b])                          w: [3·e, in]
    q, k, v = slice(qkv, 2, 0, e), slice(qkv, 2, e, 2e), slice(qkv, 2, 2e, 3e)
    out = attention(q, k, v){num_heads, causal, scale}

becomes `qkv_attention(x, w[, b]){num_heads, causal, scale}`, the form of ONNX Runtime's contrib
Attention kernel, which projects straight into its per-head layout. Not part of the default
pipeline: backends with such a kernel run it while lowering.
"""

from __future__ import annotations

from collections.abc import Callable

from cgc.ir import Graph, Node, Value
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.pattern import Alt, Match, Op, Var, apply_patterns, rewrite
from cgc.passes.registry import register_pass

x, w, b = Var("x"), Var("w"), Var("b")
qkv = Alt(Op.linear(x, w, b, name="qkv"), Op.linear(x, w, name="qkv"))


def _third(i: int) -> Callable[[Node], bool]:
    def is_third(node: Node) -> bool:
        rank, e = node.inputs[0].type.rank, node.inputs[0].shape[-1] // 3
        bounds = (node.attrs["start"], node.attrs["end"], node.attrs["step"])
        return node.attrs["axis"] % rank == rank - 1 and bounds == (i * e, (i + 1) * e, 1)

    is_third.__doc__ = f"the {'qkv'[i]} third of the last axis (slice {i}·e to {i + 1}·e)"
    return is_third


def _packed(m: Match) -> bool:
    """x is [batch, seq, in] and the projection splits into three equal thirds"""
    return m["x"].type.rank == 3 and m["qkv"].shape[-1] % 3 == 0


def _plain(node: Node) -> bool:
    """every query head has its own key head, and no window or ALiBi bias"""
    a = node.attrs
    return a["num_kv_heads"] == a["num_heads"] and not a["window"] and not a["alibi_slopes"]


@rewrite(
    Op.attention(*(Op.slice(qkv, where=_third(i)) for i in range(3)), where=_plain),
    where=_packed,
)
def qkv_attention(m: Match, g: Graph) -> Value:
    """attention(thirds of linear(x, w, b)) = qkv_attention(x, w, b)"""
    operands = [m["x"], m["w"], *([m["b"]] if "b" in m else [])]
    attrs = {key: m.root.attrs[key] for key in ("num_heads", "causal", "scale")}
    return g.call("qkv_attention", *operands, **attrs)


@register_pass
class FuseQkvAttention(Pass):
    """Fuse attention on the q, k, v thirds of one linear projection into `qkv_attention`.

    Fires when q, k and v are the first, second and third equal slices of the last axis of a
    single linear's output, that output feeds nothing else, and the attention has no mask
    operand, no shared key heads, window or ALiBi bias. Not in the default pipeline; the ONNX
    Runtime backend runs it while lowering.
    """

    name = "fuse-qkv-attention"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult.of(apply_patterns(graph, [qkv_attention], ctx))
