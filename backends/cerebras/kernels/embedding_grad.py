"""Embedding gradient (embedding_grad): scatter-add of token rows into the table's gradient.

Laid out as the lookup (kernels/embedding.py): every PE holds a vocab_tile x d_tile block of the
gradient, here in fp32 accumulators, first loaded with the accumulator operand when there is
one (the tied LM head's gradient, computed on the wafer) or zeros. A token's id and its dy
slices travel down every column; the row owning the id adds the slices to its block. Tokens are
added in stream order, so repeated ids sum in that order (what the simulator reproduces). The
cycle model assumes every token may hit the same row, as the lookup's does. Tokens of the
padding row (padding_idx) travel but add nothing.
"""

from __future__ import annotations

from typing import Any

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, elem_bytes, words
from cgc.backends.cerebras.precision import round_to
from cgc.ir.ops.backward import without_padding


class EmbeddingGrad(Kernel):
    """Rows of dy added into a [num_rows, d] fp32 gradient at the token ids."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.rows_total, self.d = self.out_types[0].shape
        self.m = self.in_types[0].numel
        self.acc = len(self.in_types) == 3
        self.b = elem_bytes(self.in_types[1], precision)

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """vocab_tile gradient rows per PE row, d_tile features per PE column."""
        return {
            "kernel": "embedding_grad",
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "vocab": self.rows_total,
            "d": self.d,
            "vocab_tile": ceil_div(self.rows_total, rows),
            "d_tile": ceil_div(self.d, cols),
            "reduce": "tokens in stream order into the owning row's fp32 block",
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """The fp32 gradient block, a double-buffered dy slice, two token ids."""
        t = self.tiling(rows, cols)
        return t["vocab_tile"] * t["d_tile"] * 4 + 2 * t["d_tile"] * self.b + 2 * 4

    def resident_bytes(self) -> int:
        """The whole gradient in fp32."""
        return self.rows_total * self.d * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: one id and one dy slice down each column, one vector add on the owning
        row. The accumulator's blocks come in down the columns first."""
        t = self.tiling(rows, cols)
        m = self.machine
        add = m.sustained_cycles(m.vector_cycles(t["d_tile"], self.precision))
        compute = self.m * (add + m.task_overhead_cycles)
        load = words(self.rows_total * t["d_tile"], self.b) if self.acc else 0
        fabric = self.m * (1 + words(t["d_tile"], self.b)) + load
        latency = m.hop_latency_cycles * rows + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        ids, dy = args[0].reshape(-1), args[1].reshape(-1, self.d)
        out = args[2].clone() if self.acc else dy.new_zeros(self.rows_total, self.d)
        dy = without_padding(ids, dy, self.attrs["padding_idx"])
        out.index_add_(0, ids, dy)  # CPU index_add_ adds the source rows in index order
        return [round_to(out, self.precision)]
