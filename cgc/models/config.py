"""Hyperparameters of a GPT-2-style model, and the Cerebras-GPT family as published.

A config is pure data so passes and cost models can reason about shapes (and count
parameters) without building a single tensor.
"""

from dataclasses import dataclass, replace

from cgc.errors import ModelError


@dataclass(frozen=True)
class GPTConfig:
    """Shape and scaling of one GPT-2 architecture model (pre-LN, learned positions, tied head)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_inner: int
    vocab_size: int = 50257
    n_positions: int = 2048
    layer_norm_epsilon: float = 1e-5
    mup: bool = False
    mup_base_width: int = 256
    embeddings_scale: float = 10.0

    def __post_init__(self) -> None:
        sizes = ("n_layer", "n_embd", "n_head", "n_inner", "vocab_size", "n_positions")
        for field in sizes:
            if getattr(self, field) < 1:
                raise ModelError(f"GPTConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise ModelError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def attn_scale(self) -> float:
        """Factor on q·k: muP uses 1/d_head so attention logits stay O(1) as width grows."""
        return 1.0 / self.d_head if self.mup else 1.0 / self.d_head**0.5

    @property
    def output_logits_scale(self) -> float:
        """Factor on the logits: muP shrinks them by base_width/width (256/d_model)."""
        return self.mup_base_width / self.n_embd if self.mup else 1.0

    def num_parameters(self) -> int:
        """Exact parameter count; the tied input/output embedding is counted once."""
        d, f = self.n_embd, self.n_inner
        layer_norm = 2 * d
        attention = (d * 3 * d + 3 * d) + (d * d + d)
        mlp = (d * f + f) + (f * d + d)
        block = 2 * layer_norm + attention + mlp
        embeddings = self.vocab_size * d + self.n_positions * d
        return embeddings + self.n_layer * block + layer_norm


def _with_mup(configs: dict[str, GPTConfig]) -> dict[str, GPTConfig]:
    """The configs, then a muP twin of each named with a "-mup" suffix."""
    return {**configs, **{f"{name}-mup": replace(c, mup=True) for name, c in configs.items()}}


# Dey et al. 2023 (arXiv 2304.03208), Table; Cerebras Model Zoo configs. d_ffn = 4 * d_model.
CEREBRAS_GPT: dict[str, GPTConfig] = _with_mup(
    {
        "cerebras-gpt-111m": GPTConfig(n_layer=10, n_embd=768, n_head=12, n_inner=3072),
        "cerebras-gpt-256m": GPTConfig(n_layer=14, n_embd=1088, n_head=17, n_inner=4352),
        "cerebras-gpt-590m": GPTConfig(n_layer=18, n_embd=1536, n_head=12, n_inner=6144),
        "cerebras-gpt-1.3b": GPTConfig(n_layer=24, n_embd=2048, n_head=16, n_inner=8192),
        "cerebras-gpt-2.7b": GPTConfig(n_layer=32, n_embd=2560, n_head=32, n_inner=10240),
        "cerebras-gpt-6.7b": GPTConfig(n_layer=32, n_embd=4096, n_head=32, n_inner=16384),
        "cerebras-gpt-13b": GPTConfig(n_layer=40, n_embd=5120, n_head=40, n_inner=20480),
    }
)


def _tiny(n_head: int, d_head: int) -> GPTConfig:
    """A 2-layer test model; d_ffn stays 4 * d_model as in every Cerebras-GPT size."""
    n_embd = n_head * d_head
    return GPTConfig(
        n_layer=2, n_embd=n_embd, n_head=n_head, n_inner=4 * n_embd, vocab_size=97, n_positions=64
    )


# Small enough to run in a unit test; the head layouts differ so that passes meet odd head
# counts, a single head, and head widths that are not powers of two, as the real sizes do.
TINY: dict[str, GPTConfig] = _with_mup(
    {
        "tiny-111m": _tiny(n_head=4, d_head=16),  # the baseline layout
        "tiny-256m": _tiny(n_head=3, d_head=16),  # odd head count (17), width not 2^k (1088)
        "tiny-590m": _tiny(n_head=2, d_head=32),  # fewer, wider heads (12 x 128)
        "tiny-1.3b": _tiny(n_head=1, d_head=48),  # one head: d_head == d_model edge case
        "tiny-2.7b": _tiny(n_head=4, d_head=10),  # d_head 80 is not a power of two
        "tiny-6.7b": _tiny(n_head=8, d_head=8),  # many narrow heads (32 heads)
        "tiny-13b": _tiny(n_head=5, d_head=12),  # head count a multiple of 5 (40 heads)
    }
)
