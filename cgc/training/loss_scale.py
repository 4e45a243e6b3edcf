"""Dynamic loss scaling: the policy that picks the loss scale of 16-bit training step by step.

The backward is seeded with the scale S instead of 1 (cgc.passes.autodiff.scale_loss), so
gradients too small for a 16-bit format come out S times larger; the update divides them by S
in fp32. A step whose gradients overflowed (an inf or NaN) is skipped and S halves; after
`growth_interval` good steps in a row S doubles. The defaults are TensorFlow's DynamicLossScale
(initial 2^15, about half fp16's largest value; 2000 steps; factor 2), which torch's GradScaler
follows with 2^16. Written here because GradScaler drives a torch optimizer, and cgc's update is
an IR graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from cgc.errors import InputError


@dataclass
class DynamicLossScale:
    """The loss scale and its growth counter; `update` after every step."""

    scale: float = 2.0**15
    growth_interval: int = 2000
    factor: float = 2.0
    good_steps: int = 0  # finite steps since the last change

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.factor > 1 and self.growth_interval >= 1):
            raise InputError(
                f"loss scaling needs a positive scale, a factor above 1 and a growth interval "
                f"of at least 1 step, got {self}"
            )

    def update(self, finite: bool) -> bool:
        """Record whether this step's gradients were finite; returns whether to apply it."""
        if not finite:
            self.scale /= self.factor
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.factor
            self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, float]:
        """What a checkpoint keeps, so a resumed run scales as the uninterrupted one."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore what `state_dict` returned."""
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no tensor holds an inf or NaN (the overflow test of a scaled step)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)
