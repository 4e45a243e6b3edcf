"""The GPT-2 architecture as Cerebras-GPT uses it, written out so every op is visible to a tracer.

Module names follow Hugging Face's GPT2LMHeadModel (`transformer.h.3.attn.c_attn`), so traced
scopes, checkpoints and error messages use the names people already know.
"""

import torch
from torch import nn

from cgc.errors import ModelError
from cgc.models.config import GPTConfig


class CausalSelfAttention(nn.Module):
    """Multi-head attention in the classic form that fusion passes pattern-match."""

    def __init__(self, config: GPTConfig, device: torch.device) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.scale = config.attn_scale
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, device=device)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.scale
        # Built per call rather than stored as a buffer so T can vary and no 2048x2048 constant
        # ends up in exported graphs.
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = att.softmax(dim=-1)
        y = att @ v
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: d_model -> d_ffn -> d_model with exact (erf) GELU."""

    def __init__(self, config: GPTConfig, device: torch.device) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.n_inner, device=device)
        self.act = nn.GELU()
        self.c_proj = nn.Linear(config.n_inner, config.n_embd, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, device: torch.device) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, device=device)
        self.attn = CausalSelfAttention(config, device)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, device=device)
        self.mlp = MLP(config, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 language model with tied embeddings; forward maps token ids [B, T] to logits."""

    def __init__(
        self, config: GPTConfig, *, seed: int = 0, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__()
        self.config = config
        # Always built on meta first: nothing is allocated twice, and a meta model (for
        # shape-only compilation of 13B) costs no memory at all.
        meta = torch.device("meta")
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd, device=meta),
                wpe=nn.Embedding(config.n_positions, config.n_embd, device=meta),
                h=nn.ModuleList(Block(config, meta) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, device=meta),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False, device=meta)
        self.tie_weights()
        device = torch.device(device)
        if device.type != "meta":
            self.to_empty(device=device)
            self.tie_weights()
            self.reset_parameters(seed)

    def tie_weights(self) -> None:
        """Share wte with lm_head; to_empty and load_state_dict(assign=True) break the tie."""
        self.lm_head.weight = self.transformer.wte.weight

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """GPT-2 init (normal 0.02, zero bias, unit LayerNorm) drawn only from `seed`."""
        generator = torch.Generator(device=self.lm_head.weight.device).manual_seed(seed)
        for module in self.modules():
            if module is self.lm_head:
                continue  # tied to wte, which is initialised once
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, 0.02, generator=generator)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ModelError(
                f"GPT expects token ids of shape [batch, seq_len], got {tuple(input_ids.shape)}"
            )
        T = input_ids.shape[1]
        if T > self.config.n_positions:
            raise ModelError(
                f"sequence length {T} exceeds the model's context of {self.config.n_positions}"
                " positions; pass at most that many tokens"
            )
        pos = torch.arange(T, device=input_ids.device)
        x = self.transformer.wte(input_ids) + self.transformer.wpe(pos)
        if self.config.mup:
            x = x * self.config.embeddings_scale
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        if self.config.mup:
            logits = logits * self.config.output_logits_scale
        return logits
