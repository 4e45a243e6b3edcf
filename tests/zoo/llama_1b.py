"""A Llama-shaped 1.1B model on the meta device: Llama 3.2 1B's shape with a 32,000 vocabulary.

Width 2048, 16 layers, 32 query heads sharing 8 key-value heads (grouped-query attention),
SwiGLU 8192, RoPE (θ = 10,000), RMSNorm, untied embeddings: 1.10B parameters, none
allocated (planning needs shapes only). The rotary frequencies are real tensors, so the
position tables fold to constants. `cgc compile tests/zoo/llama_1b.py` plans it for a WSE-2.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

SEQ_LEN = 128


class Logits(nn.Module):
    """The causal LM's logits for token ids, without a KV cache (self-contained, so the CLI can
    load this file alone)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def config() -> transformers.LlamaConfig:
    """The model's transformers config."""
    return transformers.LlamaConfig(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=32000,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def get_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The meta model and one sequence of SEQ_LEN token ids."""
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config())
    rotary = model.model.rotary_emb
    rotary.inv_freq = rotary.compute_default_rope_parameters(rotary.config)[0]
    ids = torch.zeros(1, SEQ_LEN, dtype=torch.long)
    return Logits(model).eval(), (ids,)
