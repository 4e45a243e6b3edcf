"""Elementwise ops (unary, binary, compare, select, GELU and its gradient, SiLU): tokens over
rows, features over columns.

Operands that vary from token to token stream down the columns with the tokens; operands that
do not (a bias [D], a scalar constant) stay resident in each PE's slice. Each element costs the
op's FMAC-equivalents (VECTOR_OP_COST: GELU is erf's polynomial plus three multiply-adds).
Values are computed in fp32 from operands rounded to the precision and rounded once on output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cgc.backends.cerebras.kernels.base import Cost, Kernel, ceil_div, elem_bytes, words
from cgc.backends.cerebras.machine import VECTOR_OP_COST as C
from cgc.backends.cerebras.precision import round_to
from cgc.ir import get_op

# FMAC-equivalents per output element.
ELEMENT_COST: dict[str, int] = {
    "neg": C["mul"],
    "abs": C["max"],
    "relu": C["max"],
    "logical_not": C["select"],
    "exp": C["exp"],
    "log": C["log"],
    "sqrt": C["sqrt"],
    "rsqrt": C["rsqrt"],
    "reciprocal": C["reciprocal"],
    "tanh": C["tanh"],
    "erf": C["erf"],
    "sigmoid": C["sigmoid"],
    "silu": C["sigmoid"] + C["mul"],
    "sin": C["sin"],
    "cos": C["cos"],
    "add": C["add"],
    "sub": C["add"],
    "mul": C["mul"],
    "div": C["div"],
    "pow": C["pow"],
    "maximum": C["max"],
    "minimum": C["max"],
    "where": C["select"],
    **{op: C["select"] for op in ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or")},
}


def element_cost(op: str, attrs: Mapping[str, Any]) -> int:
    """FMAC-equivalents one output element of `op` costs."""
    if op == "gelu":  # 0.5·x·(1 + erf(x/√2)), or the tanh form with x³
        if attrs["approximate"] == "tanh":
            return C["tanh"] + 3 * C["mul"] + 2 * C["add"]
        return C["erf"] + 2 * C["mul"] + C["add"]
    if op == "gelu_grad":  # dy·(Φ(x) + x·φ(x)), or the tanh form's derivative
        if attrs["approximate"] == "tanh":
            return C["tanh"] + 7 * C["mul"] + 3 * C["add"]
        return C["erf"] + C["exp"] + 5 * C["mul"] + 2 * C["add"]
    return ELEMENT_COST[op]


class Elementwise(Kernel):
    """One elementwise op over a token stream; token-invariant operands resident."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        out = self.out_types[0]
        self.d = out.shape[-1] if out.rank else 1
        self.m = out.numel // self.d if self.d else 0
        self.streamed = tuple(i for i, t in enumerate(self.in_types) if self._varies(t.shape))
        self.weight_slots = tuple(i for i in range(len(self.in_types)) if i not in self.streamed)

    @staticmethod
    def _varies(shape: tuple[int, ...]) -> bool:
        """Whether an operand differs between tokens (its axes but the last align to token axes)."""
        return any(d > 1 for d in shape[:-1])

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, d_tile features per PE."""
        return {
            "kernel": "elementwise",
            "op": self.op,
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "d": self.d,
            "m_tile": ceil_div(self.m, rows),
            "d_tile": ceil_div(self.d, cols),
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Resident operand slices, double-buffered streamed slices, the output slice."""
        dt = self.tiling(rows, cols)["d_tile"]
        resident = sum(min(self.in_types[i].numel, dt) * self._bytes(i) for i in self.weight_slots)
        streamed = sum(2 * dt * self._bytes(i) for i in self.streamed)
        return resident + streamed + dt * elem_bytes(self.out_types[0], self.precision)

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: the op's cost per element over d_tile; column links carry the stream."""
        t, m = self.tiling(rows, cols), self.machine
        dt = t["d_tile"]
        peak = element_cost(self.op, self.attrs) * m.vector_cycles(dt, self.precision)
        per_token = m.sustained_cycles(peak) + m.task_overhead_cycles
        compute = t["m_tile"] * per_token
        ins = sum(words(dt, self._bytes(i)) for i in self.streamed)
        out = words(dt, elem_bytes(self.out_types[0], self.precision))
        fabric = self.m * max(ins, out)
        latency = m.hop_latency_cycles * rows + m.task_overhead_cycles
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _bytes(self, i: int) -> int:
        return elem_bytes(self.in_types[i], self.precision)

    def _execute(self, args, tiling):
        return [round_to(get_op(self.op).impl(*args, **self.attrs), self.precision)]
