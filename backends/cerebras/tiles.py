"""Tile-level numerics shared by the kernels: fixed-order chains of partial results.

On the wafer a reduction that spans PEs is a chain: each PE adds its own partial to the one
arriving from its neighbour and passes the sum on. fp32 addition is not associative, so the
simulator adds partials in exactly that order instead of letting torch pick one; within a PE
the local tile reduction runs in fp32 in torch's order (the machine's order inside a tile is
not modelled: with 16-bit operands every product is exact and only fp32 rounding differs).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def chain_sum(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of `parts` taken in order, one fp32 add per hop of a chain."""
    it = iter(parts)
    acc = next(it).clone()
    for part in it:
        acc += part
    return acc


def segment_sums(x: torch.Tensor, segment: int) -> torch.Tensor:
    """Sums of consecutive `segment`-wide pieces of the last axis (one per PE): [..., pieces]."""
    d = x.shape[-1]
    pieces = -(-d // segment)
    if pieces * segment != d:
        x = F.pad(x, (0, pieces * segment - d))
    return x.reshape(*x.shape[:-1], pieces, segment).sum(-1)


def row_sum(x: torch.Tensor, segment: int) -> torch.Tensor:
    """Sum over the last axis as a row of PEs computes it: per-PE sums, then a west-east chain."""
    return chain_sum(segment_sums(x, segment).unbind(-1))
