"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p.

Sampling runs outside the graphs, in torch on the [batch, vocab] logits a step returns: it is a
few microseconds of work per token, needs a random generator whose state carries from step to
step (one seed reproduces a whole generation), and keeps the step graphs deterministic and the
same on every backend (a wafer returns its logits to the host anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cgc.errors import InputError


@dataclass
class Sampler:
    """temperature 0 is greedy (argmax, ties to the lowest id, as torch.argmax); otherwise
    logits / temperature, keep the `top_k` largest and the smallest set of most likely tokens
    whose probability reaches `top_p`, and draw from what remains with a seeded generator."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"--top-p must be in (0, 1], got {self.top_p}")
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token ids [batch] for logits [batch, vocab]."""
        if self.greedy:
            return logits.argmax(dim=-1)
        scores = logits.double() / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs  # of the more likely tokens
            drop = torch.zeros_like(probs, dtype=torch.bool)
            drop.scatter_(-1, order, mass_before >= self.top_p)
            scores = scores.masked_fill(drop, float("-inf"))
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
