"""Matrix multiplication."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import same_dtype
from cgc.ir.ops.registry import register
from cgc.ir.ops.vjp import swap_last_two, unbroadcast
from cgc.ir.types import TensorType


def _infer_matmul(ins: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    a, b = ins
    if a.rank < 2 or b.rank < 2 or a.shape[-1] != b.shape[-2]:
        raise IRError(f"matmul: {a} @ {b} does not fit (need [..., m, k] @ [..., k, n])")
    try:
        batch = tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except RuntimeError:
        raise IRError(f"matmul: batch dimensions of {a} and {b} do not broadcast") from None
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), same_dtype("matmul", a, b))]


def matmul_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    """2·M·N·K per batch element: one multiply and one add per term."""
    return 2 * outs[0].numel * ins[0].shape[-1]


def _matmul_vjp(g, node, cotangents):
    """da = dy·bᵀ, db = aᵀ·dy, summed over broadcast batch axes. A batched a times a matrix b
    (activations times a weight) gets db as one matmul over the flattened rows."""
    a, b = node.inputs
    dy = cotangents[0]
    da = unbroadcast(g, g.call("matmul", dy, swap_last_two(g, b)), a.type)
    if b.type.rank == 2 and a.type.rank > 2:
        rows_a = g.call("reshape", a, shape=[a.type.numel // a.shape[-1], a.shape[-1]])
        rows_dy = g.call("reshape", dy, shape=[dy.type.numel // dy.shape[-1], dy.shape[-1]])
        db = g.call("matmul", g.call("transpose", rows_a, perm=[1, 0]), rows_dy)
    else:
        db = unbroadcast(g, g.call("matmul", swap_last_two(g, a), dy), b.type)
    return [da, db]


@register("matmul", arity=2, infer=_infer_matmul, flops=matmul_flops, vjp=_matmul_vjp)
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matrix product with numpy broadcasting of batch dimensions."""
    return torch.matmul(a, b)
