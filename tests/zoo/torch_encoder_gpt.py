"""A GPT built from PyTorch's own nn.TransformerEncoderLayer blocks, as tutorials write it.

Token and learned position embeddings, nn.TransformerEncoder over the layers with the square
subsequent (causal) mask from nn.Transformer.generate_square_subsequent_mask, a final LayerNorm
and a Linear head. `norm_first` (pre- or post-LN), `activation` ("relu" or "gelu") and
`batch_first` (the layers take [batch, seq, e] or [seq, batch, e]) are the switches people flip.
nn.MultiheadAttention inside each layer projects q, k and v with one packed in_proj weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Config:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 64
    vocab_size: int = 100
    norm_first: bool = True
    activation: str = "gelu"
    batch_first: bool = True
    dropout: float = 0.1


class EncoderGPT(nn.Module):
    """Causal language model: embeddings, a causally masked nn.TransformerEncoder, a head."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.block_size, config.n_embd)
        layer = nn.TransformerEncoderLayer(
            config.n_embd,
            config.n_head,
            4 * config.n_embd,
            dropout=config.dropout,
            activation=config.activation,
            batch_first=config.batch_first,
            norm_first=config.norm_first,
        )
        self.blocks = nn.TransformerEncoder(layer, config.n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        if not self.config.batch_first:
            x = x.transpose(0, 1)
        x = self.blocks(x, mask=mask, is_causal=True)
        if not self.config.batch_first:
            x = x.transpose(0, 1)
        return self.head(self.norm(x))


def get_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A seeded 2-layer model and a batch of token ids (the CLI's MODEL entry point)."""
    torch.manual_seed(0)
    config = Config()
    ids = torch.randint(0, config.vocab_size, (2, 16))
    return EncoderGPT(config).eval(), (ids,)
