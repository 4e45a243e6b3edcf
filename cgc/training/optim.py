"""Optimizers as IR: SGD with momentum, AdamW with decoupled weight decay and bias correction,
and global gradient-norm clipping, built from primitive ops.

The updates compute what torch's single-tensor implementations do (torch.optim.SGD / AdamW on
CPU after torch.nn.utils.clip_grad_norm_), equal to fp32 rounding, with as few passes over the
parameters as that allows, since a backend runs each elementwise op as one pass over memory:
the clipping factor is not applied to the gradient but folded into the scalars that multiply
it, and the bias corrections into the step size and epsilon: AdamW with clipping and weight
decay makes 15 passes per parameter, the norm's two included, where torch's sequence makes 17.
(The squared gradients are not kept from the norm for the second moment: that would hold a
second copy of every gradient until the norm is known.)
Scalars that torch keeps as Python floats (learning rate, bias corrections) are computed in f64
and rounded to f32 where they meet an f32 tensor. The step input is the number of steps taken
before this one; torch's own counter is one more.

Defaults are the Cerebras-GPT recipe (Dey et al. 2023, arXiv 2304.03208; the Cerebras Model Zoo
configuration Cerebras_GPT/111m.yaml): AdamW with betas (0.9, 0.95), eps 1e-8, weight decay 0.1,
peak learning rate 6e-4 and gradient-norm clipping at 1.0 (max_gradient_norm).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from cgc.errors import InputError
from cgc.ir import Graph, TensorType, Value

LR = 6e-4  # Cerebras-GPT 111M's peak learning rate (Model Zoo 111m.yaml, the paper's Table)
MAX_GRAD_NORM = 1.0  # Cerebras-GPT: max_gradient_norm 1.0 (Model Zoo 111m.yaml)


def decays(t: TensorType) -> bool:
    """Whether weight decay applies: weight matrices and embeddings (rank >= 2) decay, biases
    and norm gains (rank 1) do not, as nanoGPT's configure_optimizers groups them."""
    return t.rank >= 2


@dataclass(frozen=True)
class Gradient:
    """A parameter's gradient as the update sees it: `scale`·`raw`, the scale an f32 scalar
    (the clipping factor) or None for 1."""

    raw: Value
    scale: Value | None


class Optimizer(ABC):
    """An update rule: the new parameter and state from the parameter, its gradient and state."""

    name: ClassVar[str]
    lr: float
    weight_decay: float

    @abstractmethod
    def state_names(self) -> tuple[str, ...]:
        """The per-parameter state tensors, named as torch's optimizer state names them."""

    @abstractmethod
    def update(
        self,
        g: Graph,
        param: Value,
        grad: Gradient,
        state: Sequence[Value],
        lr: Value,
        step: Value,
    ) -> tuple[Value, list[Value]]:
        """Emit the update of one parameter; `lr` is an f64 scalar, `step` the i64 step input."""

    @abstractmethod
    def to_torch(self, groups: list[dict]) -> torch.optim.Optimizer:
        """The torch optimizer computing the same update (the test and `cgc check` oracle)."""

    def torch_groups(self, named: Iterable[tuple[str, torch.nn.Parameter]]) -> list[dict]:
        """Parameter groups with and without weight decay, as `decays` splits them."""
        params = [p for _, p in named if p.requires_grad]
        on = [p for p in params if decays(TensorType.of(p))]
        off = [p for p in params if not decays(TensorType.of(p))]
        return [
            {"params": on, "weight_decay": self.weight_decay},
            {"params": off, "weight_decay": 0.0},
        ]


def _f32(g: Graph, scalar: Value) -> Value:
    """An f64 scalar rounded to f32, as torch rounds a Python float meeting an f32 tensor."""
    return g.call("cast", scalar, dtype="f32")


def _times(g: Graph, value: float, scale: Value | None, power: int = 1) -> Value:
    """The f32 scalar value·scale^power (just value without a scale)."""
    out = g.constant(value, "f32")
    for _ in range(power if scale is not None else 0):
        out = g.call("mul", out, scale)
    return out


@dataclass(frozen=True)
class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov and Hutter) and bias correction."""

    name: ClassVar[str] = "adamw"

    lr: float = LR
    betas: tuple[float, float] = (0.9, 0.95)  # Cerebras-GPT: (β1, β2) = (0.9, 0.95)
    eps: float = 1e-8  # Cerebras-GPT: adam_eps 1e-8 (the model cards; 1e-9 for the largest)
    weight_decay: float = 0.1  # Cerebras-GPT: weight_decay 0.1 (Model Zoo 111m.yaml)

    def __post_init__(self) -> None:
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0) or self.eps < 0 or self.lr < 0:
            raise InputError(f"AdamW needs betas in [0, 1), eps >= 0 and lr >= 0, got {self}")

    def state_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def update(self, g, param, grad, state, lr, step):
        b1, b2 = self.betas
        exp_avg, exp_avg_sq = state

        def f64(v: float) -> Value:
            return g.constant(v, "f64")

        # torch: step_t += 1; bias_correction = 1 - beta ** step, in Python floats
        count = g.call("cast", g.call("add", step, g.constant(1, "i64")), dtype="f64")
        correction1 = g.call("sub", f64(1.0), g.call("pow", f64(b1), count))
        root2 = g.call("sqrt", g.call("sub", f64(1.0), g.call("pow", f64(b2), count)))
        # exp_avg.lerp_(c·g, 1 - beta1) = beta1·exp_avg + ((1 - beta1)·c)·g
        exp_avg = g.call(
            "add",
            g.call("mul", exp_avg, g.constant(b1, "f32")),
            g.call("mul", grad.raw, _times(g, 1 - b1, grad.scale)),
        )
        # exp_avg_sq.mul_(beta2).addcmul_(c·g, c·g, value=1 - beta2)
        exp_avg_sq = g.call(
            "add",
            g.call("mul", exp_avg_sq, g.constant(b2, "f32")),
            g.call("mul", g.call("mul", grad.raw, grad.raw), _times(g, 1 - b2, grad.scale, 2)),
        )
        # (exp_avg_sq.sqrt() / √bc2 + eps) · √bc2 = exp_avg_sq.sqrt() + eps·√bc2
        denom = g.call(
            "add", g.call("sqrt", exp_avg_sq), _f32(g, g.call("mul", root2, f64(self.eps)))
        )
        # param.mul_(1 - lr·weight_decay).addcdiv_(exp_avg, denom, value=-lr/bc1), with the
        # √bc2 taken out of denom moved into the step size
        step_size = _f32(g, g.call("div", g.call("mul", lr, root2), correction1))
        change = g.call("mul", g.call("div", exp_avg, denom), step_size)
        if self.weight_decay and decays(param.type):
            keep = g.call("sub", f64(1.0), g.call("mul", lr, f64(self.weight_decay)))
            param = g.call("mul", param, _f32(g, keep))
        return g.call("sub", param, change), [exp_avg, exp_avg_sq]

    def to_torch(self, groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=self.eps)


@dataclass(frozen=True)
class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay, as torch's."""

    name: ClassVar[str] = "sgd"

    lr: float = LR
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.momentum < 0 or self.lr < 0 or self.weight_decay < 0:
            raise InputError(f"SGD needs lr, momentum and weight decay >= 0, got {self}")
        if self.nesterov and not self.momentum:
            raise InputError("Nesterov SGD needs a momentum above 0")

    def state_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def update(self, g, param, grad, state, lr, step):
        d = grad.raw if grad.scale is None else g.call("mul", grad.raw, grad.scale)
        if self.weight_decay and decays(param.type):
            # grad = grad.add(param, alpha=weight_decay)
            d = g.call("add", d, g.call("mul", param, g.constant(self.weight_decay, "f32")))
        new_state = []
        if self.momentum:
            # buf.mul_(momentum).add_(grad); the first step's buf = grad is the same from zeros
            (buf,) = state
            buf = g.call("add", g.call("mul", buf, g.constant(self.momentum, "f32")), d)
            new_state.append(buf)
            if self.nesterov:
                d = g.call("add", d, g.call("mul", buf, g.constant(self.momentum, "f32")))
            else:
                d = buf
        # param.add_(grad, alpha=-lr)
        return g.call("sub", param, g.call("mul", d, _f32(g, lr))), new_state

    def to_torch(self, groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)


OPTIMIZERS: dict[str, type[Optimizer]] = {"adamw": AdamW, "sgd": SGD}


def clip_grad_norm(
    g: Graph, grads: Sequence[Value], max_norm: float | None
) -> tuple[list[Gradient], Value]:
    """The gradients with the factor that clips their global 2-norm to `max_norm` (None: no
    clipping), and that norm before clipping, as torch.nn.utils.clip_grad_norm_ computes them:
    the norm of the per-tensor norms, clip_coef = max_norm / (norm + 1e-6) clamped to 1.

    Each sum of squares runs over the last axis first, then over the partial sums: one fp32
    sum over a whole 38M-element embedding gradient is off by 0.3% in ONNX Runtime.
    """
    parts = []
    for grad in grads:
        square = g.call("mul", grad, grad)
        if grad.type.rank > 1:
            square = g.call("reduce_sum", square, axes=[-1])
        total = g.call("reduce_sum", square, axes=list(range(square.type.rank)))
        norm = g.call("sqrt", total)
        parts.append(g.call("reshape", g.call("mul", norm, norm), shape=[1]))
    total = g.call("sqrt", g.call("reduce_sum", g.call("concat", *parts, axis=0), axes=[0]))
    scale = None
    if max_norm is not None:
        limit = g.constant(max_norm, "f32")
        coef = g.call("div", limit, g.call("add", total, g.constant(1e-6, "f32")))
        scale = g.call("minimum", coef, g.constant(1.0, "f32"))
    return [Gradient(grad, scale) for grad in grads], total
