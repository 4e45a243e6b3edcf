"""Matrix multiplication."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cgc.errors import IRError
from cgc.ir.ops.infer import same_dtype
from cgc.ir.ops.registry import register
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


@register("matmul", arity=2, infer=_infer_matmul, flops=matmul_flops)
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matrix product with numpy broadcasting of batch dimensions."""
    return torch.matmul(a, b)
