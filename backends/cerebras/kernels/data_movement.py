"""Ops that only move data: free relabellings and routes, and the fabric transpose.

Free (no PEs, no cycles; the planner folds them into routes): `reshape` (a row-major stream is
unchanged by a new shape), `slice` and `concat` (a consumer reads a subset of a stream, or
several streams), `expand` (a resident operand is replayed), `cast` (the precision of the
program decides storage; the value is converted exactly as the IR says), `constant` (an
immediate of its consumer), `pad` (the consumer reads zeros outside the stream), a `transpose`
that keeps the row-major order (it moves only size-1 axes) or permutes data the host loads
(parameters and graph inputs are laid out in the permuted order), and the transpose of a token
stream that a weight gradient reads as it comes (kernels/gemm_backward.py).

Any other transpose reorders the stream: the whole tensor is gathered into the rectangle's SRAM
(in through the north edge), then sent out in the new order (through the east edge).
"""

from __future__ import annotations

from typing import Any

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, elem_bytes, words
from cgc.ir import get_op

FREE_OPS = ("reshape", "slice", "concat", "expand", "cast", "constant", "transpose", "pad")


class Free(Kernel):
    """A relabelling or routing choice: no PEs, no SRAM, no cycles."""

    free = True
    moves_data = True

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """No tiles: the op is part of a route."""
        return {"kernel": "free", "op": self.op}

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Nothing."""
        return 0

    def cost(self, rows: int, cols: int) -> Cost:
        """Nothing."""
        return Cost(0, 0, 0, 0)

    def _execute(self, args, tiling):
        return [get_op(self.op).impl(*args, **self.attrs)]


def keeps_order(shape: tuple[int, ...], perm: list[int]) -> bool:
    """Whether permuting `shape` by `perm` leaves the row-major element order unchanged."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


class Transpose(Kernel):
    """A permutation of the stream: gather the tensor into SRAM, send it out reordered."""

    moves_data = True

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.numel = self.in_types[0].numel

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """Each PE buffers an equal share of the tensor."""
        return {
            "kernel": "transpose",
            "rows": rows,
            "cols": cols,
            "perm": list(self.attrs["perm"]),
            "elements_per_pe": ceil_div(self.numel, rows * cols),
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Its share of the tensor."""
        share = self.tiling(rows, cols)["elements_per_pe"]
        return share * elem_bytes(self.in_types[0], self.precision)

    def resident_bytes(self) -> int:
        """The whole tensor."""
        return self.numel * elem_bytes(self.in_types[0], self.precision)

    def cost(self, rows: int, cols: int) -> Cost:
        """In over the north edge's links, then out over the east edge's; no overlap."""
        self.tiling(rows, cols)  # checks the rectangle
        total = words(self.numel, elem_bytes(self.in_types[0], self.precision))
        fabric = ceil_div(total, cols) + ceil_div(total, rows)
        m = self.machine
        latency = m.hop_latency_cycles * (rows + cols) + m.task_overhead_cycles
        return Cost(0, fabric, latency, fabric + latency)

    def _execute(self, args, tiling):
        return [args[0].permute(self.attrs["perm"]).contiguous()]
