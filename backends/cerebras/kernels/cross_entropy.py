"""Softmax cross-entropy (cross_entropy) and its gradient (cross_entropy_grad) over [N, V] logits.

Laid out as the row reductions: tokens over rows (m_tile per row), the vocabulary over a row's
PEs (v_tile each); a token's logits arrive down the columns with its target id. Two row chains
give the max (exact in any order) and Σexp(x - max) west to east. The loss: the PE owning the
target subtracts its logit from log-sum-exp, each row adds up its tokens' losses and counts the
targets that are not ignore_index, and the rows' sums run north to south; the south row divides
("mean") and emits the 0-d loss. The gradient: every PE writes (softmax - one_hot)·dloss/count,
and 0 on ignored rows; the count of targets that count is one pass over the ids first.
Statistics and the per-row losses are fp32; outputs are rounded to the precision.
"""

from __future__ import annotations

from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import (
    Cost,
    Kernel,
    ceil_div,
    chain_reduce_cycles,
    elem_bytes,
    words,
)
from cgc.backends.cerebras.machine import VECTOR_OP_COST as C
from cgc.backends.cerebras.precision import round_to
from cgc.backends.cerebras.tiles import chain_sum, row_sum


class _SoftmaxRows(Kernel):
    """What the loss and its gradient share: the layout and the per-token statistics."""

    per_element = 0  # FMAC-equivalents per logit
    per_token = 0  # scalar work per token at a chain's end

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.n, self.v = self.in_types[0].shape
        self.b = elem_bytes(self.in_types[0], precision)

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """m_tile tokens per row, v_tile logits per PE; each used row sums its own tokens."""
        v_tile, m_tile = ceil_div(self.v, cols), ceil_div(self.n, rows)
        return {
            "kernel": "cross_entropy",
            "op": self.op,
            "rows": rows,
            "cols": cols,
            "n": self.n,
            "v": self.v,
            "m_tile": m_tile,
            "v_tile": v_tile,
            "chain": ceil_div(self.v, v_tile),
            "token_groups": ceil_div(self.n, m_tile),
            "reduce": "max and Σexp west to east; rows north to south",
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """A double-buffered slice of logits, its fp32 working copy, two ids."""
        vt = self.tiling(rows, cols)["v_tile"]
        return 2 * vt * self.b + vt * 4 + 2 * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token: the element passes over v_tile and the chains' scalar work; the rows'
        partial sums and counts run north to south at the end."""
        m = self.machine
        t = self.tiling(rows, cols)
        peak = self.per_element * m.vector_cycles(t["v_tile"], self.precision) + self.per_token
        compute = t["m_tile"] * (m.sustained_cycles(peak) + m.task_overhead_cycles)
        # Column links carry every token's logits and target (and the gradient back out);
        # row links two partial sums east and two statistics west per token.
        fabric = max(self.n * (words(t["v_tile"], self.b) + 1), t["m_tile"] * 4)
        rows_sum = chain_reduce_cycles(m, t["token_groups"], 2)
        latency = m.hop_latency_cycles * (rows + 4 * t["chain"]) + m.task_overhead_cycles + rows_sum
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _statistics(self, x: torch.Tensor, v_tile: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's max and Σexp(x - max), the sum by chain (fp32)."""
        top = x.amax(-1, keepdim=True)
        return top, row_sum(torch.exp(x - top), v_tile).unsqueeze(-1)

    def _valid(self, targets: torch.Tensor) -> torch.Tensor:
        return targets != self.attrs["ignore_index"]


class CrossEntropy(_SoftmaxRows):
    """The mean (or sum) over targets that count of log-sum-exp minus the target's logit."""

    per_element = C["max"] + C["add"] + C["exp"] + C["add"]
    per_token = C["log"] + 3  # log, subtract the target's logit, add to the row's sum, count

    def _execute(self, args, tiling):
        x, targets = args
        top, total = self._statistics(x, tiling["v_tile"])
        valid = self._valid(targets)
        picked = x.gather(-1, torch.where(valid, targets, 0).long().unsqueeze(-1))
        losses = torch.where(valid, (top + torch.log(total) - picked).squeeze(-1), 0.0)
        step = tiling["m_tile"]
        loss = chain_sum(losses[r : r + step].sum() for r in range(0, self.n, step))
        if self.attrs["reduction"] == "mean":
            loss = loss / valid.sum().to(loss.dtype)
        return [round_to(loss, self.precision)]


class CrossEntropyGrad(_SoftmaxRows):
    """(softmax - one_hot)·dloss/count on rows that count, 0 on ignored ones."""

    per_element = C["max"] + C["add"] + C["exp"] + C["add"] + 2 * C["mul"]
    per_token = C["reciprocal"] + 2  # 1/Σ, the target's -1, the row's scale
    weight_slots = (2,)  # dloss: one scalar, resident

    def cost(self, rows: int, cols: int) -> Cost:
        """As the loss, plus a first pass counting the targets that count."""
        base = super().cost(rows, cols)
        t = self.tiling(rows, cols)
        m = self.machine
        count = t["m_tile"] + m.hop_latency_cycles * rows + m.task_overhead_cycles
        return Cost(base.compute, base.fabric, base.latency + count, base.total + count)

    def _execute(self, args, tiling):
        x, targets, dloss = args
        top, total = self._statistics(x, tiling["v_tile"])
        probs = torch.exp(x - top) / total
        valid = self._valid(targets)
        hot = torch.nn.functional.one_hot(torch.where(valid, targets, 0).long(), self.v)
        scale = dloss
        if self.attrs["reduction"] == "mean":
            scale = dloss / valid.sum().to(dloss.dtype)
        rows = torch.where(valid, scale, torch.zeros(()))
        return [round_to((probs - hot) * rows[:, None], self.precision)]
