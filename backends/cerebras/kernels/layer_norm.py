"""Layer norm over the last axis: tokens over rows, features over the columns of a row.

Each PE holds a `d_tile` slice of the scale and shift. A token's slices arrive down the
columns; two chains along the row give the statistics in two passes (as the IR's
decomposition does): Σx west to east → mean broadcast back, then Σ(x - mean)² → rstd broadcast
back; each PE then writes (x - mean)·rstd·w + b. Statistics are fp32; the output is rounded to
the precision.
"""

from __future__ import annotations

from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import Cost, Kernel, row_layout, words
from cgc.backends.cerebras.machine import VECTOR_OP_COST
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.backends.cerebras.tiles import row_sum


class LayerNorm(Kernel):
    """(x - mean)/sqrt(var + eps)·w + b along the last axis, statistics by row chains."""

    op = "layer_norm"
    # Chain passes per token (each a chain west to east and a broadcast back): the mean, then
    # the variance of the centred copy.
    chains = 2
    reduce = "two passes, each a chain west to east then broadcast back"

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.d = self.in_types[0].shape[-1]
        self.m = self.in_types[0].numel // self.d
        self.weight_slots = tuple(range(1, len(self.in_types)))

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, d_tile features per PE; the chain is the row's used PEs."""
        return {
            "kernel": self.op,
            **row_layout(self.m, self.d, rows, cols),
            "reduce": self.reduce,
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Scale (and shift) slices, a double-buffered token slice, and for each chain after the
        first an fp32 centred copy."""
        dt = self.tiling(rows, cols)["d_tile"]
        b = BYTES[self.precision]
        return len(self.weight_slots) * dt * b + 2 * dt * b + (self.chains - 1) * dt * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: a vector pass per chain, the normalisation and one per weight; column
        links carry every token."""
        m = self.machine
        t = self.tiling(rows, cols)
        vec = m.vector_cycles(t["d_tile"], self.precision)
        peak = (1 + self.chains + len(self.weight_slots)) * vec + 2 + VECTOR_OP_COST["rsqrt"]
        per_token = m.sustained_cycles(peak) + m.task_overhead_cycles
        compute = t["m_tile"] * per_token
        # Column links carry each token's slice once (inputs for rows below, outputs from
        # rows above); row links one partial sum east and one statistic west per chain.
        fabric = max(self.m * words(t["d_tile"], BYTES[self.precision]), t["m_tile"] * self.chains)
        latency = m.hop_latency_cycles * (rows + 2 * self.chains * t["chain"])
        latency += m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        x = args[0]
        dt = tiling["d_tile"]
        mean = (row_sum(x, dt) / self.d).unsqueeze(-1)
        centred = x - mean
        var = (row_sum(centred * centred, dt) / self.d).unsqueeze(-1)
        y = centred * torch.rsqrt(var + self.attrs["eps"])
        if len(args) > 1:
            y = y * args[1]
        if len(args) > 2:
            y = y + args[2]
        return [round_to(y, self.precision)]
