"""Reductions along the last axis (softmax, log_softmax, reduce_*, var), as layer norm lays out,
and sums across tokens (the leading axes: bias gradients).

Tokens go over rows and the reduced axis over a row's PEs; sums run as west-to-east chains in a
fixed order (maxima are exact in any order) and statistics come back west when every element
needs them (softmax). A sum across tokens (TokenReduction) is a different kernel: the kept
elements stay in accumulators while the tokens stream past them. Other axes are refused: after
fusion and autodiff, GPT graphs reduce nothing else.
"""

from __future__ import annotations

from math import prod
from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import (
    Cost,
    Kernel,
    band_count,
    ceil_div,
    chain_reduce_cycles,
    elem_bytes,
    row_layout,
    words,
)
from cgc.backends.cerebras.machine import VECTOR_OP_COST as C
from cgc.backends.cerebras.precision import round_to
from cgc.backends.cerebras.tiles import chain_sum, row_sum
from cgc.errors import UnsupportedOpError
from cgc.ir import Node

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
                "reduces only along the last axis or across leading axes; run the fusion "
                "passes or reshape first"
            )
        self.d = x.shape[-1]
        self.m = x.numel // self.d

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, d_tile elements per PE; the chain is the row's used PEs."""
        return {
            "kernel": "row_reduction",
            "op": self.op,
            **row_layout(self.m, self.d, rows, cols),
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


def reduces_leading_axes(node: Node) -> bool:
    """Whether `node` is a reduce_sum over a prefix of its input's axes that keeps the last
    (a sum across tokens, as a bias gradient is)."""
    if node.op != "reduce_sum":
        return False
    x = node.inputs[0].type
    axes = sorted(a % x.rank for a in node.attrs["axes"]) if x.rank else []
    return bool(axes) and axes == list(range(len(axes))) and len(axes) < x.rank


class TokenReduction(Kernel):
    """A sum across tokens (leading axes): kept elements in fp32 accumulators, tokens streaming.

    The input is `slabs` (the reduced axes) of `positions` tokens of `d` features. Features go
    over a row's PEs (d_tile); the rows form `token_groups` bands, each accumulating a contiguous
    share of the slabs into its own copy of the sum, with a band's rows taking the positions
    (p_tile each). At the end the bands' copies are summed north to south. A bias gradient is
    one position: every band then holds the whole [d] sum.
    """

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        if not reduces_leading_axes(node):
            raise UnsupportedOpError(
                f"{self.op} over axes {self.attrs['axes']} at {self.where}: the cerebras "
                "backend sums across tokens only over leading axes"
            )
        x = self.in_types[0]
        reduced = len(self.attrs["axes"])
        self.slabs = prod(x.shape[:reduced])
        self.d = x.shape[-1]
        self.positions = x.numel // (self.slabs * self.d)
        self.b = elem_bytes(x, precision)
        self._options: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """The band count that fits in SRAM with the fewest cycles."""
        groups = band_count(
            min(rows, self.slabs),
            lambda g: self._evaluate(rows, cols, g),
            self.machine.sram_usable_bytes,
        )
        band = rows // groups
        return {
            "kernel": "token_reduction",
            "rows": rows,
            "cols": cols,
            "slabs": self.slabs,
            "positions": self.positions,
            "d": self.d,
            "token_groups": groups,
            "slab_tile": ceil_div(self.slabs, groups),
            "p_tile": ceil_div(self.positions, band),
            "d_tile": ceil_div(self.d, cols),
            "reduce": "slabs in order into fp32 accumulators, then bands north to south",
        }

    def _evaluate(self, rows: int, cols: int, groups: int) -> tuple[int, int, int, int]:
        """(compute, fabric, band reduction, sram) with `groups` bands."""
        key = (rows, cols, groups)
        if key not in self._options:
            m = self.machine
            p_tile = ceil_div(self.positions, rows // groups)
            d_tile = ceil_div(self.d, cols)
            per_token = m.sustained_cycles(m.vector_cycles(d_tile, self.precision))
            tokens = ceil_div(self.slabs, groups) * p_tile
            compute = tokens * (per_token + m.task_overhead_cycles)
            fabric = self.slabs * self.positions * words(d_tile, self.b)  # down every column
            reduce = chain_reduce_cycles(m, groups, p_tile * d_tile)
            sram = p_tile * d_tile * 4 * (2 if groups > 1 else 1) + 2 * d_tile * self.b
            self._options[key] = (compute, fabric, reduce, sram)
        return self._options[key]

    def sram_bytes(self, rows: int, cols: int) -> int:
        """fp32 accumulators (and an incoming block when bands reduce), a token buffer."""
        return self._evaluate(rows, cols, self.tiling(rows, cols)["token_groups"])[3]

    def resident_bytes(self) -> int:
        """The sum in fp32."""
        return self.out_types[0].numel * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """One vector add per token over d_tile; then the bands' copies summed."""
        groups = self.tiling(rows, cols)["token_groups"]
        compute, fabric, reduce, _ = self._evaluate(rows, cols, groups)
        m = self.machine
        latency = m.hop_latency_cycles * (rows + cols) + m.task_overhead_cycles + reduce
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        x = args[0].reshape(self.slabs, -1)
        step = tiling["slab_tile"]
        partials = (x[s0 : s0 + step].sum(0) for s0 in range(0, self.slabs, step))
        out = chain_sum(partials).reshape(self.out_types[0].shape)
        return [round_to(out, self.precision)]
