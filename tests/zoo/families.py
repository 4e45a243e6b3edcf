"""Tiny models of the GPT families people hand to cgc (tests and bench/families.py build them).

Hugging Face causal-LM families from their transformers configs (2 layers, width 64, 4 heads,
seeded random weights, no download), called with token ids and a left-padded attention_mask
and returning the logits without a KV cache; and PyTorch's own transformer modules from this
folder (a GPT of nn.TransformerEncoderLayer blocks in three variants, an nn.Transformer
encoder-decoder). `build(name, seq)` gives (module, example inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers
from torch import nn

from zoo import torch_encoder_gpt, torch_transformer

VOCAB = 100
_COMMON = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)


class CausalLM(nn.Module):
    """A Hugging Face causal LM returning only the logits, without a KV cache (its config is
    where cgc's generation finds the context length)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits


def _llama(**options) -> dict:
    return dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        **options,
        **_COMMON,
    )


# family -> its transformers config
HF_CONFIGS: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, **_COMMON),
    "gpt_bigcode": lambda: transformers.GPTBigCodeConfig(
        n_layer=2, n_embd=64, n_head=4, multi_query=True, **_COMMON
    ),
    "gpt_neo": lambda: transformers.GPTNeoConfig(
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
        **_COMMON,
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=256,
        rotary_pct=0.5,
        **_COMMON,
    ),
    "gptj": lambda: transformers.GPTJConfig(
        n_layer=2, n_embd=64, n_head=4, rotary_dim=8, **_COMMON
    ),
    "codegen": lambda: transformers.CodeGenConfig(
        n_layer=2, n_embd=64, n_head=4, rotary_dim=8, n_ctx=128, **_COMMON
    ),
    "opt": lambda: transformers.OPTConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_dim=256,
        word_embed_proj_dim=64,
        **_COMMON,
    ),
    "bloom": lambda: transformers.BloomConfig(n_layer=2, hidden_size=64, n_head=4, **_COMMON),
    "falcon": lambda: transformers.FalconConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        new_decoder_architecture=False,
        multi_query=True,
        **_COMMON,
    ),
    "llama": lambda: transformers.LlamaConfig(**_llama(num_key_value_heads=4)),
    "llama_gqa": lambda: transformers.LlamaConfig(**_llama(num_key_value_heads=2)),
    "mistral": lambda: transformers.MistralConfig(
        **_llama(num_key_value_heads=2, sliding_window=8)
    ),
    "qwen2": lambda: transformers.Qwen2Config(**_llama(num_key_value_heads=2)),
    "phi": lambda: transformers.PhiConfig(**_llama(partial_rotary_factor=0.5)),
}

# PyTorch modules: the encoder GPT's (norm_first, activation, batch_first), or None for the
# encoder-decoder
TORCH_MODELS: dict[str, tuple[bool, str, bool] | None] = {
    "encoder_gpt_pre_gelu": (True, "gelu", True),
    "encoder_gpt_post_relu": (False, "relu", True),
    "encoder_gpt_seq_first": (False, "relu", False),
    "nn_transformer": None,
}

NAMES = [*HF_CONFIGS, *TORCH_MODELS]


def ids(seq: int, seed: int = 1) -> torch.Tensor:
    """A seeded [2, seq] batch of token ids."""
    return torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(seed))


def left_padded(seq: int) -> torch.Tensor:
    """An attention_mask whose second row pads its first 5 positions."""
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, :5] = 0
    return mask


def _noisy_vectors(model: nn.Module) -> nn.Module:
    """Seeded noise on every vector parameter (norm scales and shifts, biases), so no two are
    equal: models fresh from their config have norms of ones and zeros, which would test less
    and which torch.onnx.export stores once for all layers."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def hf_model(name: str) -> nn.Module:
    """The seeded transformers model of a family, in eval mode."""
    torch.manual_seed(0)
    return _noisy_vectors(transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[name]()))


def build(name: str, seq: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(module, example inputs) of a family at sequence length `seq`."""
    if name in HF_CONFIGS:
        return CausalLM(hf_model(name)).eval(), (ids(seq), left_padded(seq))
    torch.manual_seed(0)
    options = TORCH_MODELS[name]
    if options is None:  # source 8 tokens longer than the target: cross-attention t != s
        model = _noisy_vectors(torch_transformer.Seq2Seq(torch_transformer.Config()))
        return model, (ids(seq + 8, seed=2), ids(seq))
    norm_first, activation, batch_first = options
    config = torch_encoder_gpt.Config(
        norm_first=norm_first, activation=activation, batch_first=batch_first
    )
    return _noisy_vectors(torch_encoder_gpt.EncoderGPT(config)), (ids(seq),)
