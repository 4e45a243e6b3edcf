"""How many positions a PyTorch model declares it has: generation sizes its cache by it and
training its windows."""

from __future__ import annotations

import torch

# Where models say how many positions they have: GPT-2 and Cerebras-GPT configs, nanoGPT and
# minGPT, Hugging Face configs.
_CONTEXT_ATTRS = ("n_positions", "block_size", "max_position_embeddings", "n_ctx")


def declared_context(module: torch.nn.Module) -> int | None:
    """The positions a model's config or attributes declare, or None (ALiBi models such as
    BLOOM declare none: they have no position table)."""
    for owner in (getattr(module, "config", None), module):
        for attr in _CONTEXT_ATTRS:
            value = getattr(owner, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return None
