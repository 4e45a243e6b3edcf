"""Every op's VJP rule against torch.autograd on its own reference implementation.

One generic harness: for each sample (operands and attributes), the op alone in a graph whose
loss is Σ out·R (R random, so the output cotangent is random too), differentiated by the
autodiff pass and run by the interpreter, against torch.autograd through `OpDef.impl`. An op
added to the registry needs a VJP rule or `differentiable=False`, and then a sample here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from cgc.ir import Graph, TensorType, all_ops, get_op, interpret
from cgc.passes.autodiff import differentiate


@dataclass(frozen=True)
class T:
    """An operand: shape, dtype and how to fill it."""

    shape: tuple[int, ...]
    dtype: str = "f64"
    # normal | positive | ties | ids:N | bool | padding (an additive mask) | fixed (a table of
    # constants, such as rotary angles: not trained)
    fill: str = "normal"

    def make(self, gen: torch.Generator) -> torch.Tensor:
        dtype = TensorType(self.shape, self.dtype).torch_dtype
        if self.fill.startswith("ids:"):
            return torch.randint(0, int(self.fill[4:]), self.shape, generator=gen, dtype=dtype)
        if self.fill == "bool":
            return torch.rand(self.shape, generator=gen) > 0.5
        if self.fill == "ties":  # few distinct values, so maxima tie
            return torch.randint(0, 3, self.shape, generator=gen).to(dtype)
        x = torch.randn(self.shape, generator=gen, dtype=torch.float64)
        if self.fill == "positive":
            x = x.abs() + 0.5
        return x.to(dtype)


@dataclass(frozen=True)
class Case:
    operands: tuple[T, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


def case(*operands: T, **attrs: Any) -> Case:
    return Case(operands, attrs)


def t(*shape: int, dtype: str = "f64", fill: str = "normal") -> T:
    return T(shape, dtype, fill)


POS = "positive"
ATTN = {"num_heads": 2, "scale": 0.4}


def _padding_mask() -> T:
    return t(1, 1, 4, 4, fill="padding")


UNARY = ["neg", "abs", "exp", "tanh", "erf", "sigmoid", "relu", "cos", "sin", "silu"]
FIXED = "fixed"
POSITIVE = ["log", "sqrt", "rsqrt", "reciprocal"]
REDUCE = ["reduce_sum", "reduce_mean"]

SAMPLES: dict[str, list[Case]] = {
    **{op: [case(t(3, 4))] for op in UNARY},
    **{op: [case(t(3, 4, fill=POS))] for op in POSITIVE},
    **{
        op: [case(t(2, 3, 4), t(4)), case(t(2, 1, 4), t(3, 1))]
        for op in ("add", "sub", "mul", "maximum", "minimum")
    },
    "div": [case(t(2, 3, 4), t(4, fill=POS)), case(t(3, 1), t(2, 1, 4, fill=POS))],
    "pow": [case(t(2, 3, fill=POS), t(3)), case(t(4, 3, fill=POS), t(1, fill=POS))],
    "where": [case(t(2, 3, fill="bool"), t(2, 3), t(3)), case(t(3, fill="bool"), t(2, 1), t(2, 3))],
    "cast": [case(t(2, 3, dtype="f32"), dtype="f64"), case(t(2, 3), dtype="f32")],
    **{
        op: [case(t(2, 3, 4), axes=[1], keepdim=False), case(t(2, 3, 4), axes=[0, 2], keepdim=True)]
        for op in REDUCE
    },
    "reduce_max": [
        case(t(2, 3, 4, fill="ties"), axes=[1], keepdim=False),
        case(t(2, 3, 4), axes=[-1], keepdim=True),
    ],
    "var": [
        case(t(2, 3, 4), axes=[-1], keepdim=True, correction=0),
        case(t(2, 3, 4), axes=[0, 1], keepdim=False, correction=1),
    ],
    "softmax": [case(t(2, 3, 4), axis=-1), case(t(2, 3, 4), axis=0)],
    "log_softmax": [case(t(2, 3, 4), axis=-1), case(t(2, 3, 4), axis=1)],
    "matmul": [
        case(t(2, 3, 4), t(4, 5)),
        case(t(2, 1, 3, 4), t(3, 4, 5)),
        case(t(3, 4), t(2, 4, 5)),
    ],
    "reshape": [case(t(2, 3, 4), shape=[6, 4])],
    "transpose": [case(t(2, 3, 4), perm=[2, 0, 1])],
    "expand": [case(t(3, 1), shape=[2, 3, 4])],
    "slice": [
        case(t(2, 7, 3), axis=1, start=1, end=6, step=1),
        case(t(2, 8, 3), axis=-2, start=1, end=8, step=3),
    ],
    "pad": [
        case(t(2, 3), axis=1, before=2, after=1, interior=0),
        case(t(3, 2), axis=0, before=0, after=2, interior=2),
    ],
    "concat": [case(t(2, 3), t(2, 1), t(2, 4), axis=1)],
    "embedding": [case(t(7, 4), t(2, 5, dtype="i64", fill="ids:7"))],
    "linear": [case(t(2, 3, 4), t(5, 4), t(5)), case(t(3, 4), t(5, 4))],
    "layer_norm": [
        case(t(2, 3, 6), t(6), t(6), eps=1e-5),
        case(t(3, 6), t(6), eps=1e-3),
        case(t(3, 6), eps=1e-5),
    ],
    "gelu": [case(t(3, 5), approximate="none"), case(t(3, 5), approximate="tanh")],
    "attention": [
        case(t(2, 4, 6), t(2, 4, 6), t(2, 4, 6), causal=False, **ATTN),
        case(t(2, 4, 6), t(2, 4, 6), t(2, 4, 4), causal=True, **ATTN),
        case(t(1, 4, 6), t(1, 4, 6), t(1, 4, 6), _padding_mask(), causal=True, **ATTN),
        case(t(1, 3, 6), t(1, 5, 6), t(1, 5, 6), causal=True, **ATTN),
        # 4 query heads sharing 2 key-value heads; multi-query with a padding mask
        case(
            t(2, 4, 8), t(2, 4, 4), t(2, 4, 4), causal=True, num_heads=4, num_kv_heads=2, scale=0.4
        ),
        case(t(1, 4, 6), t(1, 4, 3), t(1, 4, 3), _padding_mask(), num_kv_heads=1, **ATTN),
        case(t(1, 5, 6), t(1, 5, 6), t(1, 5, 6), causal=True, window=2, **ATTN),
        case(t(1, 4, 6), t(1, 4, 6), t(1, 4, 6), causal=True, alibi_slopes=[0.5, 0.25], **ATTN),
    ],
    "attention_lse": [
        case(t(2, 4, 6), t(2, 4, 6), t(2, 4, 6), causal=True, **ATTN),
        case(t(1, 4, 6), t(1, 4, 6), t(1, 4, 6), _padding_mask(), causal=False, **ATTN),
        case(t(1, 4, 8), t(1, 4, 4), t(1, 4, 4), causal=True, num_kv_heads=1, **ATTN),
    ],
    "cumsum": [case(t(2, 3, 4), axis=1), case(t(5), axis=0)],
    "rms_norm": [case(t(2, 3, 6), t(6), eps=1e-5), case(t(3, 6), eps=1e-3)],
    "rotary_embedding": [
        case(t(2, 4, 8), t(4, 2, fill=FIXED), t(4, 2, fill=FIXED), num_heads=2, rotary_dim=4),
        case(
            t(2, 4, 8),
            t(2, 4, 2, fill=FIXED),
            t(2, 4, 2, fill=FIXED),
            num_heads=2,
            rotary_dim=4,
            interleaved=True,
        ),
    ],
    "swiglu": [case(t(2, 3, 4), t(5, 4), t(5, 4)), case(t(3, 4), t(2, 4), t(2, 4))],
    "cross_entropy": [
        case(t(6, 5), t(6, dtype="i64", fill="ids:5"), ignore_index=2, reduction="mean"),
        case(t(6, 5), t(6, dtype="i32", fill="ids:5"), ignore_index=-100, reduction="sum"),
    ],
    "dropout": [case(t(4, 8), t(dtype="i64", fill="ids:1000"), p=0.3, stream=2)],
    "qkv_attention": [
        case(t(2, 4, 6), t(12, 6), t(12), causal=True, **ATTN),
        case(t(1, 4, 6), t(12, 6), causal=False, **ATTN),
    ],
}


def _operand(spec: T, gen: torch.Generator) -> torch.Tensor:
    if spec.fill == "padding":  # additive mask: key 3 masked for all, query 0 sees no key
        mask = torch.zeros(spec.shape, dtype=torch.float64)
        mask[..., 3] = float("-inf")
        mask[..., 0, :] = float("-inf")
        return mask
    return spec.make(gen)


def _cases() -> list:
    return [
        pytest.param(op, c, id=f"{op}-{i}")
        for op, cases in sorted(SAMPLES.items())
        for i, c in enumerate(cases)
    ]


def test_every_op_has_a_vjp_or_is_marked_non_differentiable() -> None:
    missing = [n for n, op in all_ops().items() if op.differentiable and op.vjp is None]
    assert not missing, (
        f"ops without a VJP rule (add one or register differentiable=False): {missing}"
    )
    marked = [n for n, op in all_ops().items() if not op.differentiable and op.vjp is not None]
    assert not marked, f"ops marked non-differentiable that declare a VJP: {marked}"


def test_every_differentiable_op_has_a_gradient_sample() -> None:
    differentiable = {n for n, op in all_ops().items() if op.differentiable}
    assert differentiable - set(SAMPLES) == set(), "add samples to SAMPLES in this file"
    assert set(SAMPLES) - differentiable == set()


@pytest.mark.parametrize(("op", "sample"), _cases())
def test_vjp_matches_torch_autograd(op: str, sample: Case) -> None:
    gen = torch.Generator().manual_seed(0)
    data = [_operand(spec, gen) for spec in sample.operands]
    opdef = get_op(op)
    attrs = opdef.complete_attrs(sample.attrs)

    # cgc: the op alone, loss = Σ out·R over its first output, differentiated by the pass.
    g = Graph("vjp")
    operands = [
        g.add_param(
            f"x{i}",
            TensorType.of(x),
            x,
            trainable=x.is_floating_point() and spec.fill not in ("padding", FIXED),
        )
        for i, (x, spec) in enumerate(zip(data, sample.operands, strict=True))
    ]
    out = g.add_node(op, operands, attrs).outputs[0]
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.type.torch_dtype)
    r = g.add_param("r", out.type, weights)
    loss = g.call("reduce_sum", g.call("mul", out, r), axes=list(range(out.type.rank)))
    g.outputs = [loss]
    differentiate(g)
    got = dict(zip((v.name for v in g.outputs), interpret(g), strict=True))

    # torch: autograd through the reference implementation.
    leaves = [
        x.clone().requires_grad_(name in g.trainable or f"grad.{name}" in got)
        for name, x in zip((v.name for v in operands), data, strict=True)
    ]
    result = opdef.impl(*leaves, **attrs)
    first = result[0] if isinstance(result, tuple) else result
    (first * weights).sum().backward()

    torch.testing.assert_close(got[g.outputs[0].name], (first * weights).sum().detach())
    for leaf, v in zip(leaves, operands, strict=True):
        if not leaf.requires_grad:
            continue
        expected = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        assert f"grad.{v.name}" in got, f"no gradient for operand %{v.name}"
        tol = 1e-5 if leaf.dtype == torch.float32 else 1e-10
        torch.testing.assert_close(got[f"grad.{v.name}"], expected, rtol=tol, atol=tol)
