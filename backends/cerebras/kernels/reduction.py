"""Reductions along the last axis (softmax, log_softmax, reduce_*, var), as layer norm lays out.

Tokens go over rows and the reduced axis over a row's PEs; sums run as west-to-east chains in a
fixed order (maxima are exact in any order) and statistics come back west when every element
needs them (softmax). Only the last axis is supported: after fusion GPT graphs reduce nothing
else, and an axis across tokens would need a different kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, elem_bytes, words
from cgc.backends.cerebras.machine import VECTOR_OP_COST as C
from cgc.backends.cerebras.precision import round_to
from cgc.backends.cerebras.tiles import row_sum
from cgc.errors import UnsupportedOpError

# FMAC-equivalents per input element, and per-token scalar work at the chain's end.
_PER_ELEMENT = {
    "softmax": C["max"] + C["add"] + C["exp"] + C["add"] + C["div"],
    "log_softmax": C["max"] + C["add"] + C["exp"] + C["add"] + C["add"],
    "reduce_sum": C["add"],
    "reduce_mean": C["add"],
    "reduce_max": C["max"],
    "var": 3 * C["add"],
}
_PER_TOKEN = {
    "softmax": 2,
    "log_softmax": 2 + C["log"],
    "reduce_sum": 1,
    "reduce_mean": 2,
    "reduce_max": 1,
    "var": 4,
}


class RowReduction(Kernel):
    """A reduction or softmax along the last axis, by per-PE partials and row chains."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        x = self.in_types[0]
        axes = [self.attrs["axis"]] if "axis" in self.attrs else list(self.attrs["axes"])
        if x.rank == 0 or [a % x.rank for a in axes] != [x.rank - 1]:
            raise UnsupportedOpError(
                f"{self.op} over axes {axes} of {x} at {self.where}: the cerebras backend "
                "reduces only along the last axis; run the fusion passes or reshape first"
            )
        self.d = x.shape[-1]
        self.m = x.numel // self.d

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, d_tile elements per PE; the chain is the row's used PEs."""
        d_tile = ceil_div(self.d, cols)
        return {
            "kernel": "row_reduction",
            "op": self.op,
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "d": self.d,
            "m_tile": ceil_div(self.m, rows),
            "d_tile": d_tile,
            "chain": ceil_div(self.d, d_tile),
            "reduce": "chain west to east",
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """A double-buffered token slice and its fp32 working copy."""
        dt = self.tiling(rows, cols)["d_tile"]
        return 2 * dt * elem_bytes(self.in_types[0], self.precision) + dt * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: the op's element passes over d_tile plus the chain's scalar work."""
        m = self.machine
        t = self.tiling(rows, cols)
        b = elem_bytes(self.in_types[0], self.precision)
        dt = t["d_tile"]
        vec = m.vector_cycles(dt, self.precision)
        peak = _PER_ELEMENT[self.op] * vec + _PER_TOKEN[self.op]
        per_token = m.sustained_cycles(peak) + m.task_overhead_cycles
        compute = t["m_tile"] * per_token
        out = words(dt, b) if self.out_types[0].numel == self.in_types[0].numel else 1
        fabric = max(self.m * max(words(dt, b), out), t["m_tile"] * 2)
        latency = m.hop_latency_cycles * (rows + 2 * t["chain"]) + (m.task_overhead_cycles)
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        x = args[0]
        dt = tiling["d_tile"]
        keep = self.attrs.get("keepdim", True)
        if self.op in ("softmax", "log_softmax"):
            shifted = x - x.amax(-1, keepdim=True)
            total = row_sum(torch.exp(shifted), dt).unsqueeze(-1)
            out = torch.exp(shifted) / total if self.op == "softmax" else shifted - total.log()
        elif self.op == "reduce_max":
            out = x.amax(-1, keepdim=keep)
        else:
            out = row_sum(x, dt)
            if self.op == "reduce_mean":
                out = out / self.d
            elif self.op == "var":
                centred = x - (out / self.d).unsqueeze(-1)
                out = row_sum(centred * centred, dt) / (self.d - self.attrs["correction"])
            if keep:
                out = out.unsqueeze(-1)
        return [round_to(out, self.precision)]
