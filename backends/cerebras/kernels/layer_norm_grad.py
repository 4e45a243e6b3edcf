"""Layer norm backward (layer_norm_grad): dx per token, the gain's and shift's gradients summed.

Laid out as the forward (kernels/layer_norm.py): tokens over rows (m_tile per row), features
over a row's PEs (d_tile each, with the gain slice resident). A token's dy and x slices arrive
down the columns; four row chains give, west to east and broadcast back, Σx (the mean),
Σ(x - mean)² (1/σ, recomputed rather than saved, as the IR op does), Σ dy·w and Σ dy·w·x̂; each
PE then writes dx = (dy·w - mean(dy·w) - x̂·mean(dy·w·x̂))/σ and adds dy·x̂ and dy to fp32
accumulators of dw and db. After the last token the rows' accumulators are summed north to
south (base.chain_reduce_cycles). Statistics are fp32; outputs are rounded to the precision.
"""

from __future__ import annotations

from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import (
    Cost,
    Kernel,
    ceil_div,
    chain_reduce_cycles,
    row_layout,
    words,
)
from cgc.backends.cerebras.machine import VECTOR_OP_COST
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.backends.cerebras.tiles import chain_sum, row_sum


class LayerNormGrad(Kernel):
    """dx, dw, db of layer_norm along the last axis; dw and db summed over rows, then bands."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.d = self.in_types[1].shape[-1]
        self.m = self.in_types[1].numel // self.d
        self.gain = len(self.in_types) == 3
        self.weight_slots = (2,) if self.gain else ()

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, d_tile features per PE; each used row sums its own dw, db."""
        layout = row_layout(self.m, self.d, rows, cols)
        return {
            "kernel": "layer_norm_grad",
            **layout,
            "token_groups": ceil_div(self.m, layout["m_tile"]),
            "reduce": "four row chains per token; dw, db rows north to south",
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Gain slice, double-buffered dy and x slices, fp32 x̂ and dy·w, fp32 dw and db with
        an incoming pair to add."""
        dt = self.tiling(rows, cols)["d_tile"]
        b = BYTES[self.precision]
        return (dt * b if self.gain else 0) + 2 * 2 * dt * b + 2 * dt * 4 + 2 * 2 * dt * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: statistics again, x̂, dy·w, two more sums, dx, the dw and db updates;
        then the rows' accumulators summed."""
        m = self.machine
        t = self.tiling(rows, cols)
        b = BYTES[self.precision]
        vec = m.vector_cycles(t["d_tile"], self.precision)
        peak = 13 * vec + 4 + VECTOR_OP_COST["rsqrt"]
        compute = t["m_tile"] * (m.sustained_cycles(peak) + m.task_overhead_cycles)
        # Column links carry each token's dy and x slices in and its dx out; row links four
        # partial sums east and four statistics west.
        fabric = max(self.m * 2 * words(t["d_tile"], b), t["m_tile"] * 8)
        latency = (
            m.hop_latency_cycles * (rows + 8 * t["chain"])
            + m.task_overhead_cycles
            + chain_reduce_cycles(m, t["token_groups"], 2 * t["d_tile"])
        )
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        dy, x = args[0].reshape(self.m, self.d), args[1].reshape(self.m, self.d)
        dt, step = tiling["d_tile"], tiling["m_tile"]
        mean = (row_sum(x, dt) / self.d).unsqueeze(-1)
        centred = x - mean
        var = row_sum(centred * centred, dt) / self.d
        rstd = torch.rsqrt(var + self.attrs["eps"]).unsqueeze(-1)
        xhat = centred * rstd
        dxhat = dy * args[2] if self.gain else dy
        mean_d = (row_sum(dxhat, dt) / self.d).unsqueeze(-1)
        mean_dx = (row_sum(dxhat * xhat, dt) / self.d).unsqueeze(-1)
        dx = (dxhat - mean_d - xhat * mean_dx) * rstd
        rows = range(0, self.m, step)
        dw = chain_sum((dy[r : r + step] * xhat[r : r + step]).sum(0) for r in rows)
        db = chain_sum(dy[r : r + step].sum(0) for r in rows)
        p = self.precision
        return [round_to(dx, p).reshape(self.in_types[1].shape), round_to(dw, p), round_to(db, p)]
