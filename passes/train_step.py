"""train-step: append the optimizer update to a joint (loss, grad.<param>) graph, making the
whole training step one graph (cgc.training.step); run it after `autodiff`."""

from __future__ import annotations

from cgc.errors import InputError
from cgc.ir import Graph
from cgc.passes.manager import Pass, PassContext, PassResult
from cgc.passes.registry import register_pass
from cgc.training.optim import LR, MAX_GRAD_NORM, SGD, AdamW, Optimizer
from cgc.training.schedule import FLOOR, Schedule
from cgc.training.step import build_step


@register_pass
class TrainStep(Pass):
    """Turn the joint graph into a training step: clip, schedule and apply the optimizer.

    Trainable parameters become inputs beside the optimizer state and the step counter
    (`step`, the steps already taken); outputs are loss, grad_norm, lr, then `new.X` for every
    input X the step updates. weight-decay and momentum apply to the optimizer that uses them;
    max-grad-norm=0 turns clipping off.
    """

    name = "train-step"
    optimizer: str = "adamw"
    lr: float = LR
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "linear"
    warmup: int = 0
    total: int = 1
    floor: float = FLOOR
    max_grad_norm: float = MAX_GRAD_NORM

    @classmethod
    def of(cls, optimizer: Optimizer, schedule: Schedule, max_grad_norm: float | None) -> TrainStep:
        """The pass applying these objects (what `cgc train` and compile_train build)."""
        options = {"optimizer": optimizer.name, "lr": optimizer.lr}
        options["weight_decay"] = optimizer.weight_decay
        if isinstance(optimizer, AdamW):
            options |= {"beta1": optimizer.betas[0], "beta2": optimizer.betas[1]}
            options["eps"] = optimizer.eps
        elif isinstance(optimizer, SGD):
            options |= {"momentum": optimizer.momentum, "nesterov": optimizer.nesterov}
        options |= {"schedule": schedule.kind, "warmup": schedule.warmup}
        options |= {"total": schedule.total, "floor": schedule.floor}
        options["max_grad_norm"] = max_grad_norm or 0.0
        return cls(**options)

    def build_optimizer(self) -> Optimizer:
        """The optimizer these options describe."""
        if self.optimizer == "adamw":
            return AdamW(self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay)
        if self.optimizer == "sgd":
            return SGD(self.lr, self.momentum, self.weight_decay, self.nesterov)
        raise InputError(f"unknown optimizer {self.optimizer!r}; choose adamw or sgd")

    def build_schedule(self) -> Schedule:
        """The learning-rate schedule these options describe."""
        return Schedule(self.schedule, self.warmup, self.total, self.floor)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        before = len(graph.nodes)
        optimizer, schedule = self.build_optimizer(), self.build_schedule()
        build_step(graph, optimizer, schedule, self.max_grad_norm or None)
        return PassResult.of({"nodes-added": len(graph.nodes) - before})
