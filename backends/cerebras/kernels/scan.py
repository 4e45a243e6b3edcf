"""Running sums along the last axis (`cumsum`): tokens over rows, the axis over a row's PEs.

Each PE holds a `d_tile` segment of a token's row and forms its local running sums (a scalar
add per element: a scan does not vectorise), then a chain west to east carries the sum of
everything to the west: each PE adds the incoming carry to its segment (one vector add) and
passes the carry plus its own segment's total on. OPT and BLOOM take positions from the
padding mask this way. Integers add exactly; floats add in fp32 in the chain's order and the
output is rounded to the precision. Only the last axis is supported, as for the reductions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cgc.backends.cerebras.kernels.base import Cost, Kernel, elem_bytes, row_layout, words
from cgc.backends.cerebras.precision import round_to
from cgc.errors import UnsupportedOpError


class Scan(Kernel):
    """Running sums along the last axis by per-PE scans and a west-to-east carry chain."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        x = self.in_types[0]
        if x.rank == 0 or self.attrs["axis"] % x.rank != x.rank - 1:
            raise UnsupportedOpError(
                f"{self.op} over axis {self.attrs['axis']} of {x} at {self.where}: the cerebras "
                "backend scans only along the last axis; reshape or transpose first"
            )
        self.d = x.shape[-1]
        self.m = x.numel // self.d

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, d_tile elements per PE; the chain is the row's used PEs."""
        return {
            "kernel": "scan",
            "op": self.op,
            **row_layout(self.m, self.d, rows, cols),
            "reduce": "carry chain west to east",
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """A double-buffered token segment and its running sums."""
        dt = self.tiling(rows, cols)["d_tile"]
        return 3 * dt * elem_bytes(self.in_types[0], self.precision)

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: d_tile scalar adds, then the carry added to the segment (one vector)."""
        m = self.machine
        t = self.tiling(rows, cols)
        dt = t["d_tile"]
        peak = dt + m.vector_cycles(dt, self.precision) + 1
        per_token = m.sustained_cycles(peak) + m.task_overhead_cycles
        compute = t["m_tile"] * per_token
        fabric = max(self.m * words(dt, elem_bytes(self.in_types[0], self.precision)), t["m_tile"])
        latency = m.hop_latency_cycles * (rows + t["chain"]) + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        x = args[0]
        dt, pieces = tiling["d_tile"], tiling["chain"]
        if pieces * dt != self.d:
            x = F.pad(x, (0, pieces * dt - self.d))
        local = x.reshape(*x.shape[:-1], pieces, dt).cumsum(-1)
        carry = torch.zeros_like(local[..., 0, -1])
        segments = []
        for piece in local.unbind(-2):  # west to east
            segments.append(piece + carry.unsqueeze(-1))
            carry = carry + piece[..., -1]
        out = torch.cat(segments, -1)[..., : self.d]
        return [round_to(out, self.precision)]
