"""Training: losses added to forward graphs (the autodiff pass lives in cgc.passes)."""

from cgc.training.loss import add_next_token_loss

__all__ = ["add_next_token_loss"]
