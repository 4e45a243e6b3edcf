"""A hand-written GPT on nn.MultiheadAttention (batch_first, a boolean causal mask buffer),
with a learned position parameter, a tanh-GELU MLP in nn.Sequential and the head tied to the
token embedding: the pieces tutorials assemble without nn.TransformerEncoderLayer. Traced,
the attention's packed in-projection is a bmm with its weight expanded over the tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int, context: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d)
        )
        causal = torch.triu(torch.ones(context, context, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=self.causal[:t, :t], need_weights=False)
        x = x + a
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 96, d: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.block_size = 32
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, self.block_size, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, self.block_size) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def get_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A seeded 2-layer model and a batch of token ids (the CLI's MODEL entry point)."""
    torch.manual_seed(0)
    return GPT().eval(), (torch.randint(0, 96, (2, 24)),)
