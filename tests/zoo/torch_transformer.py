"""An encoder-decoder model on PyTorch's nn.Transformer, as its translation tutorial builds it.

Source and target token embeddings with learned positions, nn.Transformer (post-LN by default)
with a causal target mask, and a Linear head over the decoder output. Each decoder layer has
self-attention (causal) and cross-attention to the encoder output (queries and keys of
different lengths, not causal), so 2 encoder + 2 decoder layers hold 6 attention blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Config:
    n_encoder: int = 2
    n_decoder: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 128
    vocab_size: int = 100
    norm_first: bool = False
    dropout: float = 0.1


class Seq2Seq(nn.Module):
    """Logits of the target tokens given the source tokens."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.src_tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.tgt_tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.Transformer(
            config.n_embd,
            config.n_head,
            config.n_encoder,
            config.n_decoder,
            4 * config.n_embd,
            dropout=config.dropout,
            batch_first=True,
            norm_first=config.norm_first,
        )
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        s, t = src.shape[1], tgt.shape[1]
        src_x = self.src_tok(src) + self.pos(torch.arange(s, device=src.device))
        tgt_x = self.tgt_tok(tgt) + self.pos(torch.arange(t, device=tgt.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tgt.device)
        out = self.transformer(src_x, tgt_x, tgt_mask=mask, tgt_is_causal=True)
        return self.head(out)


def get_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A seeded model and a batch of 24 source and 16 target token ids."""
    torch.manual_seed(0)
    config = Config()
    src = torch.randint(0, config.vocab_size, (2, 24))
    tgt = torch.randint(0, config.vocab_size, (2, 16))
    return Seq2Seq(config).eval(), (src, tgt)
