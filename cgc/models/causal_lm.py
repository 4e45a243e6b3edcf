"""Hugging Face checkpoint folders of any causal-LM family (Llama, Mistral, Qwen, Phi, ...).

cgc's own GPT reads GPT-2 checkpoints, Cerebras-GPT's format, without transformers. Every other
`model_type` is built by transformers' AutoModelForCausalLM, the library that defines them all,
from the folder alone (local files, safetensors only: a pickle can run arbitrary code).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cgc.errors import ModelError, first_line


class CausalLM(nn.Module):
    """A transformers causal LM that takes token ids and returns the logits alone, without its
    own KV cache (cgc derives one); `config` is where context and vocabulary are read."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def read_config(folder: Path) -> dict[str, Any]:
    """A checkpoint's config.json, read once for the loader it picks and the loader itself."""
    file = folder / "config.json"
    if not file.is_file():
        raise ModelError(f"{file}: missing; a Hugging Face checkpoint folder needs its config.json")
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(
            f"{file}: not valid JSON ({err}); restore the checkpoint's config.json"
        ) from None


def load_causal_lm(folder: Path, kind: str | None) -> CausalLM:
    """The checkpoint in `folder` as a CausalLM in fp32, eval mode."""
    try:
        import transformers
    except ImportError:
        raise ModelError(
            f"{folder}: a {kind!r} checkpoint loads through transformers; pip install transformers"
        ) from None
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as err:
        message = first_line(err)
        raise ModelError(
            f"{folder}: transformers cannot load it as a causal LM: {message}"
        ) from None
    return CausalLM(model).eval()


def save_causal_lm(module: CausalLM, params: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Write trained `params` (the CausalLM's parameter names) as the model's own checkpoint:
    config.json and model.safetensors, as save_pretrained writes them."""
    missing = {n for n, _ in module.named_parameters()} - set(params)
    if missing:
        raise ModelError(f"no trained value for parameter {sorted(missing)[0]}")
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(params[name])
    from transformers.utils import logging

    logging.disable_progress_bar()  # cgc's own bar is showing: no second one per checkpoint
    module.model.save_pretrained(folder, safe_serialization=True)
