"""The optimizer update on the wafer, where layer-pipelined training keeps the optimizer state.

Not an IR node: in a pipelined training plan, the region that completes a parameter's gradient
(its weight-gradient, bias-sum, layer-norm or embedding-gradient kernel, whose fp32 accumulator
already holds it) also keeps the parameter's fp32 master copy and its optimizer state, and
applies the update there once the batch's gradients are complete. The update is elementwise:
each PE updates its ceil(elements / PEs) share in fp32 with the optimizer's operations, after
adding its share's Σg² into the wafer-wide gradient norm that clipping needs; then it sends the
new weights, rounded to the precision, to the regions that read them (forward and data
gradient). What it computes is the training step's update graph, elementwise in fp32 (see
cgc.backends.cerebras.training), so this class models only its SRAM and cycles.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgc.backends.cerebras.kernels.base import Cost, ceil_div, words
from cgc.backends.cerebras.machine import VECTOR_OP_COST as C
from cgc.backends.cerebras.machine import Machine
from cgc.backends.cerebras.precision import BYTES
from cgc.errors import InputError


@dataclass(frozen=True)
class UpdateRule:
    """An optimizer's fp32 tensors per parameter and FMAC-equivalents per element."""

    state: int
    per_element: int


# FMAC-equivalents per element of the IR updates (cgc.training.optim), clipping's scale included:
# AdamW: decay (mul), exp_avg lerp (sub, mul, add), exp_avg_sq (3 mul, add), sqrt, the bias
# correction's divide, + eps, the step size's mul, the divide, the add; SGD with momentum: the
# buffer's mul and add, the rate's mul, the add.
UPDATE_RULES = {
    "adamw": UpdateRule(
        state=2,
        per_element=C["mul"] * 6 + C["add"] * 5 + C["sqrt"] + 2 * C["div"],
    ),
    "sgd": UpdateRule(state=1, per_element=C["mul"] * 3 + C["add"] * 2),
}


def update_rule(optimizer: str) -> UpdateRule:
    """The rule of `optimizer` (adamw or sgd), else an InputError listing them."""
    if optimizer not in UPDATE_RULES:
        raise InputError(
            f"unknown optimizer {optimizer!r} for the wafer; choose from {', '.join(UPDATE_RULES)}"
        )
    return UPDATE_RULES[optimizer]


class OptimizerUpdate:
    """The update of `elements` parameter elements on one region."""

    def __init__(self, optimizer: str, elements: int, machine: Machine, precision: str) -> None:
        self.rule = update_rule(optimizer)
        self.elements = elements
        self.machine = machine
        self.precision = precision

    def state_bytes(self) -> int:
        """fp32 master weights and optimizer state of the region's parameters."""
        return self.elements * 4 * (1 + self.rule.state)

    def sram_bytes(self, rows: int, cols: int) -> int:
        """The busiest PE's share of the master weights and state."""
        return ceil_div(self.elements, rows * cols) * 4 * (1 + self.rule.state)

    def cost(self, rows: int, cols: int) -> Cost:
        """Σg² of the share, the update of the share at the fp32 rate, and the new weights
        sent out over the region's columns."""
        m = self.machine
        share = ceil_div(self.elements, rows * cols)
        vec = m.vector_cycles(share, "fp32")
        compute = m.sustained_cycles((1 + self.rule.per_element) * vec) + 2 * m.task_overhead_cycles
        fabric = ceil_div(words(self.elements, BYTES[self.precision]), cols)
        latency = m.hop_latency_cycles * (rows + cols)
        return Cost(compute, fabric, latency, compute + fabric + latency)


def norm_cycles(machine: Machine) -> int:
    """The wafer-wide sum of the regions' Σg² and the broadcast of the clip scale back: a
    reduction across the usable rectangle and a broadcast, one hop per PE each way."""
    span = machine.usable_width + machine.usable_height
    return 2 * (machine.hop_latency_cycles * span + machine.task_overhead_cycles)
