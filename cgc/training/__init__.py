"""Training: the loss added to forward graphs, optimizers and schedules as IR, the step graph,
data, checkpoints, metrics and the loop (the autodiff pass lives in cgc.passes)."""

from cgc.training.loss import add_next_token_loss
from cgc.training.optim import SGD, AdamW, Optimizer
from cgc.training.schedule import Schedule

__all__ = ["SGD", "AdamW", "Optimizer", "Schedule", "add_next_token_loss"]
