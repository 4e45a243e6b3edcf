"""A small character model whose loss skips some targets, as code that masks padding or
prompt tokens does: targets that are spaces become -1 and cross-entropy ignores them, so how
many positions a batch trains on depends on its text.

`forward(idx, targets)` returns the mean cross-entropy over the targets that are kept.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SPACE = ord(" ")


class MaskedLM(nn.Module):
    def __init__(self, vocab_size: int = 256, n_embd: int = 32, block_size: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        logits = self.head(torch.tanh(self.ln(x)))
        targets = targets.masked_fill(targets == SPACE, -1)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)


def get_model() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 17))
    return MaskedLM(), (ids[:, :-1], ids[:, 1:])
