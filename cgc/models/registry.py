"""Built-in models by name: what the CLI, benchmarks and tests ask for."""

import torch

from cgc.errors import ModelError
from cgc.models.config import CEREBRAS_GPT, TINY, GPTConfig
from cgc.models.gpt import GPT

_BUILTIN: dict[str, GPTConfig] = {**CEREBRAS_GPT, **TINY}

# fp32 weights above this stay on meta unless asked: 1.3B (5.3 GB) and up would exhaust a
# laptop, while 590M (2.4 GB) still runs for numerics checks.
_AUTO_META_BYTES = 4 * 2**30


def available() -> list[str]:
    """Every built-in model name: the seven Cerebras-GPT sizes, their muP twins, the tiny ones."""
    return list(_BUILTIN)


def get_config(name: str) -> GPTConfig:
    """The config of a built-in model."""
    try:
        return _BUILTIN[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; run `cgc models` to list the built-in names"
        ) from None


def build(name: str, *, seed: int = 0, device: str | torch.device | None = None) -> GPT:
    """A built-in model with seeded weights; device=None picks meta for models over 4 GiB."""
    config = get_config(name)
    if device is None:
        device = "meta" if 4 * config.num_parameters() > _AUTO_META_BYTES else "cpu"
    return GPT(config, seed=seed, device=device)


def example_inputs(
    config: GPTConfig, batch: int = 1, seq_len: int | None = None, seed: int = 0
) -> tuple[torch.Tensor]:
    """Seeded token ids [batch, seq_len] (int64, in [0, vocab)); seq_len defaults to 128 or less."""
    return token_ids(config.vocab_size, config.n_positions, batch, seq_len, seed)


def token_ids(
    vocab: int, context: int, batch: int = 1, seq_len: int | None = None, seed: int = 0
) -> tuple[torch.Tensor]:
    """Seeded token ids [batch, seq_len] in [0, vocab) for a model of `context` positions."""
    if seq_len is None:
        seq_len = min(128, context)
    if not 1 <= seq_len <= context:
        raise ModelError(
            f"seq_len {seq_len} is outside 1..{context}, the model's context;"
            " pick a shorter sequence"
        )
    if batch < 1:
        raise ModelError(f"batch {batch} must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=generator, dtype=torch.int64)
    return (ids,)
