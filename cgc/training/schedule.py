"""Learning-rate schedules as IR on the step input: linear warmup, then linear or cosine decay to
a floor, or constant.

The factor multiplies the peak learning rate at step t, the number of steps taken before this
one (torch's LambdaLR calls it `last_epoch`, nanoGPT `iter_num`). The graph computes it in f64
from its step input, so one compiled step serves a whole run and the factor is the Python float
`factor(t)` gives, which is what a LambdaLR built on it multiplies by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cgc.errors import InputError
from cgc.ir import Graph, Value

KINDS = ("linear", "cosine", "constant")

# Cerebras-GPT decays to a tenth of the peak: the Model Zoo's Cerebras_GPT/111m.yaml schedules
# LinearLR 0 -> 6e-4 over 1525 steps, then LinearLR 6e-4 -> 6e-5 over the remaining 7512.
FLOOR = 0.1
# ... and warms up over 1525 of its 9037 steps (16.9%), the default share of --steps.
WARMUP_SHARE = 1525 / 9037


@dataclass(frozen=True)
class Schedule:
    """Linear warmup over `warmup` steps, then `kind` decay until step `total`, ending at `floor`
    times the peak ("constant" stays at the peak after warmup)."""

    kind: str = "linear"
    warmup: int = 0
    total: int = 1
    floor: float = FLOOR

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown schedule {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.warmup < 0 or self.total < 1:
            raise InputError(f"schedule needs warmup >= 0 and total >= 1, got {self}")
        if not 0.0 <= self.floor <= 1.0:
            raise InputError(
                f"the schedule's floor must be a fraction of the peak, got {self.floor}"
            )

    def factor(self, t: int) -> float:
        """The learning rate of step t as a fraction of the peak (the LambdaLR lambda).

        Warmup ramps (t + 1) / warmup, so the first step does not waste itself at lr 0 (as
        Cerebras' LinearLR from 0 would); decay runs from t = warmup to t = total.
        """
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min((t - self.warmup) / self._span, 1.0)
        if self.kind == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.floor + (1.0 - self.floor) * shape

    @property
    def _span(self) -> int:
        return max(self.total - self.warmup, 1)

    def build(self, g: Graph, step: Value) -> Value:
        """The factor as an f64 scalar computed from the i64 step input, op for op as `factor`."""

        def c(value: float) -> Value:
            return g.constant(value, "f64")

        if self.kind == "constant" and not self.warmup:
            return c(1.0)
        t = g.call("cast", step, dtype="f64")
        if self.kind == "constant":
            decay = c(1.0)
        else:
            progress = g.call(
                "minimum", g.call("div", g.call("sub", t, c(self.warmup)), c(self._span)), c(1.0)
            )
            if self.kind == "linear":
                shape = g.call("sub", c(1.0), progress)
            else:
                cosine = g.call("cos", g.call("mul", c(math.pi), progress))
                shape = g.call("mul", c(0.5), g.call("add", c(1.0), cosine))
            decay = g.call("add", c(self.floor), g.call("mul", c(1.0 - self.floor), shape))
        if not self.warmup:
            return decay
        warm = g.call("div", g.call("add", t, c(1.0)), c(self.warmup))
        return g.call("where", g.call("lt", t, c(self.warmup)), warm, decay)
