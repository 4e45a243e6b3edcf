"""Embedding lookup: the table resident, vocabulary over rows and features over columns.

Every PE holds a vocab_tile x d_tile block of the table. A token id travels down every column;
the row that owns the id copies its slices out and they leave south along the columns. The
cycle model assumes the worst case for the owning rows: every token of the batch may hit the
same one. The result is the table's rows rounded to the precision (a lookup adds no error).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, words
from cgc.backends.cerebras.precision import BYTES


class Embedding(Kernel):
    """table[ids] with the table split into vocab_tile x d_tile blocks."""

    weight_slots = (0,)

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.vocab, self.d = self.in_types[0].shape
        self.m = self.in_types[1].numel

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """vocab_tile table rows per PE row, d_tile features per PE column."""
        return {
            "kernel": "embedding",
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "vocab": self.vocab,
            "d": self.d,
            "vocab_tile": ceil_div(self.vocab, rows),
            "d_tile": ceil_div(self.d, cols),
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """The table block, a double-buffered output slice, two token ids."""
        t = self.tiling(rows, cols)
        b = BYTES[self.precision]
        return t["vocab_tile"] * t["d_tile"] * b + 2 * t["d_tile"] * b + 2 * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: one id down each column, one slice copied and sent south."""
        t = self.tiling(rows, cols)
        b = BYTES[self.precision]
        m = self.machine
        copy = m.sustained_cycles(m.vector_cycles(t["d_tile"], self.precision))
        compute = self.m * (copy + m.task_overhead_cycles)
        fabric = self.m * (1 + words(t["d_tile"], b))
        latency = m.hop_latency_cycles * rows + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        table, ids = args
        return [F.embedding(ids, table)]
