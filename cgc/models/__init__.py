"""GPT models: Cerebras-GPT configs, a tracer-friendly PyTorch GPT-2, and a checkpoint loader."""

from cgc.models.config import CEREBRAS_GPT, TINY, GPTConfig
from cgc.models.gpt import GPT
from cgc.models.hf import load_hf_checkpoint, save_hf_checkpoint
from cgc.models.registry import available, build, example_inputs, get_config, token_ids

__all__ = [
    "CEREBRAS_GPT",
    "GPT",
    "TINY",
    "GPTConfig",
    "available",
    "build",
    "example_inputs",
    "get_config",
    "load_hf_checkpoint",
    "save_hf_checkpoint",
    "token_ids",
]
