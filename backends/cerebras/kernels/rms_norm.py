"""RMS norm over the last axis: tokens over rows, features over the columns of a row.

Laid out as layer norm (kernels/layer_norm.py) but in one pass: each PE holds a `d_tile` slice
of the scale; a token's slices arrive down the columns, Σx² runs as a chain west to east, the
east PE forms rstd = 1/√(Σx²/D + eps) and broadcasts it back west, and each PE writes x·rstd·w.
There is no mean to subtract, so a token costs one chain and one broadcast, not two. The
statistic is fp32; the output is rounded to the precision.
"""

from __future__ import annotations

from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, words
from cgc.backends.cerebras.machine import VECTOR_OP_COST
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.backends.cerebras.tiles import row_sum


class RMSNorm(Kernel):
    """x/√(mean(x²) + eps)·w along the last axis, the statistic by a row chain."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.d = self.in_types[0].shape[-1]
        self.m = self.in_types[0].numel // self.d
        self.weight_slots = tuple(range(1, len(self.in_types)))

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, d_tile features per PE; the chain is the row's used PEs."""
        d_tile = ceil_div(self.d, cols)
        return {
            "kernel": "rms_norm",
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "d": self.d,
            "m_tile": ceil_div(self.m, rows),
            "d_tile": d_tile,
            "chain": ceil_div(self.d, d_tile),
            "reduce": "one pass: a chain west to east, then broadcast back",
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """The scale slice and a double-buffered token slice."""
        dt = self.tiling(rows, cols)["d_tile"]
        b = BYTES[self.precision]
        return len(self.weight_slots) * dt * b + 2 * dt * b

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: square-sum, normalise, scale; column links carry every token."""
        m = self.machine
        t = self.tiling(rows, cols)
        vec = m.vector_cycles(t["d_tile"], self.precision)
        peak = (2 + len(self.weight_slots)) * vec + 2 + VECTOR_OP_COST["rsqrt"]
        per_token = m.sustained_cycles(peak) + m.task_overhead_cycles
        compute = t["m_tile"] * per_token
        # Column links carry each token's slice once; row links one partial sum east and one
        # statistic west.
        fabric = max(self.m * words(t["d_tile"], BYTES[self.precision]), t["m_tile"])
        latency = m.hop_latency_cycles * (rows + 2 * t["chain"]) + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        x = args[0]
        mean_square = (row_sum(x * x, tiling["d_tile"]) / self.d).unsqueeze(-1)
        y = x * torch.rsqrt(mean_square + self.attrs["eps"])
        if len(args) > 1:
            y = y * args[1]
        return [round_to(y, self.precision)]
