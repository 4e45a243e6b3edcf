"""Rotary position embedding on q or k: tokens over rows, whole heads over columns.

A rotation mixes the two features of a pair (i and i + rotary_dim/2, or 2i and 2i+1), so each
PE takes `head_tile` whole heads of a token and no pair crosses a PE. The token's cos and sin
rows (rotary_dim/2 values each, the same for every head) arrive with it down every column, as
any operand that varies from token to token does (kernels/elementwise.py). Per head a PE forms
a·cos - b·sin and b·cos + a·sin over the rotary_dim/2 pairs (four vector operations); the
features past rotary_dim pass through in place. Values are computed in fp32 from operands
rounded to the precision and rounded once on output.
"""

from __future__ import annotations

from typing import Any

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, words
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.ir import get_op


class RotaryEmbedding(Kernel):
    """The first rotary_dim features of each head turned by their position's angles."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        x = self.in_types[0]
        self.heads = self.attrs["num_heads"]
        self.head_dim = x.shape[-1] // self.heads
        self.half = self.attrs["rotary_dim"] // 2
        self.m = x.numel // x.shape[-1]

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, head_tile heads per PE."""
        head_tile = ceil_div(self.heads, cols)
        return {
            "kernel": "rotary_embedding",
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "rotary_dim": 2 * self.half,
            "interleaved": self.attrs["interleaved"],
            "m_tile": ceil_div(self.m, rows),
            "head_tile": head_tile,
            "used_cols": ceil_div(self.heads, head_tile),
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Double-buffered token slice (its heads) and cos and sin rows, the output slice."""
        t = self.tiling(rows, cols)
        b = BYTES[self.precision]
        features = t["head_tile"] * self.head_dim
        return 2 * features * b + 2 * 2 * self.half * b + features * b

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: four vector operations over each head's pairs; column links carry the
        heads' features and the cos and sin rows."""
        m = self.machine
        t = self.tiling(rows, cols)
        b = BYTES[self.precision]
        peak = 4 * m.vector_cycles(t["head_tile"] * self.half, self.precision)
        per_token = m.sustained_cycles(peak) + m.task_overhead_cycles
        compute = t["m_tile"] * per_token
        fabric = self.m * (words(t["head_tile"] * self.head_dim, b) + 2 * words(self.half, b))
        latency = m.hop_latency_cycles * rows + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        return [round_to(get_op(self.op).impl(*args, **self.attrs), self.precision)]
