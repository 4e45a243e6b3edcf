"""GPT code as people write it fuses completely under the default pipeline, numerics intact.

Two models in the styles most GPT code copies: nanoGPT (fused qkv Linear split three ways, a
`flash` switch between F.scaled_dot_product_attention and a manual path masked with a `bias`
buffer, nn.GELU, a LayerNorm with optional bias, tied embeddings) and minGPT (manual attention
with the same buffer, GELU's tanh formula written out, dropout everywhere, an MLP in a
ModuleDict called through a lambda). Both run in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cgc.ir import Graph
from cgc.passes import DEFAULT_PIPELINE

STAGES = ["trace", *DEFAULT_PIPELINE.split(","), "onnxruntime"]
LEFTOVERS = ("softmax", "erf", "tanh", "matmul", "pow", "reduce_mean")


@dataclass
class Config:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int = 16
    vocab_size: int = 67
    dropout: float = 0.1
    bias: bool = True
    flash: bool = True


# -- nanoGPT style ------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (nn.LayerNorm could not, before torch 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.flash = config.flash
        if not self.flash:
            size = config.block_size
            self.register_buffer("bias", torch.tril(torch.ones(size, size)).view(1, 1, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.flash:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None,
                dropout_p=self.dropout if self.training else 0,
                is_causal=True,
            )
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoMLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NanoBlock(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = NanoAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = NanoMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([NanoBlock(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)


# -- minGPT style -------------------------------------------------------------------------------


class NewGELU(nn.Module):
    """GELU as in Google BERT / OpenAI GPT: the tanh approximation, written out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            0.5
            * x
            * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
        )


class MinAttention(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        size = config.block_size
        self.register_buffer("bias", torch.tril(torch.ones(size, size)).view(1, 1, size, size))
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MinBlock(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = MinAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.ModuleDict(
            dict(
                c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
                c_proj=nn.Linear(4 * config.n_embd, config.n_embd),
                act=NewGELU(),
                dropout=nn.Dropout(config.dropout),
            )
        )
        m = self.mlp
        self.mlpf = lambda x: m.dropout(m.c_proj(m.act(m.c_fc(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlpf(self.ln_2(x))
        return x


class MinGPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([MinBlock(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device).unsqueeze(0)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)


# -- tests --------------------------------------------------------------------------------------

# (n_layer, n_head, n_embd, seq): one head; d_head 8; d_head 10 and 6 (not powers of two); a
# sequence as long as the block, where the mask buffer is used unsliced.
SHAPES = [(1, 1, 8, 12), (2, 4, 32, 12), (3, 3, 30, 16), (2, 5, 30, 9)]


def shape_id(shape: tuple[int, int, int, int]) -> str:
    n_layer, n_head, n_embd, seq = shape
    return f"L{n_layer}-H{n_head}-d{n_embd // n_head}-T{seq}"


def randomized(model: nn.Module) -> nn.Module:
    """Seeded noise on every weight, so LayerNorm scales and biases are not 1 and 0; eval mode
    turns dropout off."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def token_ids(config: Config, seq: int) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (torch.randint(0, config.vocab_size, (2, seq), generator=generator),)


def assert_fully_fused(g: Graph, config: Config, approximate: str) -> None:
    counts = g.op_counts()
    fused = {op: counts.get(op, 0) for op in ("attention", "gelu", "layer_norm")}
    n = config.n_layer
    assert fused == {"attention": n, "gelu": n, "layer_norm": 2 * n + 1}, counts
    assert not set(LEFTOVERS) & set(counts), counts
    d_head = config.n_embd // config.n_head
    assert [n.attrs for n in g.nodes if n.op == "attention"] == [
        {"num_heads": config.n_head, "causal": True, "scale": pytest.approx(d_head**-0.5)}
    ] * n
    assert [n.attrs for n in g.nodes if n.op == "gelu"] == [{"approximate": approximate}] * n


@pytest.mark.parametrize("flash", [True, False], ids=["sdpa", "masked_fill"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_nanogpt_fuses_completely(shape, flash: bool, default_pipeline_checked) -> None:
    n_layer, n_head, n_embd, seq = shape
    config = Config(n_layer, n_head, n_embd, flash=flash)
    torch.manual_seed(0)
    model = randomized(NanoGPT(config))
    g, stages = default_pipeline_checked(model, token_ids(config, seq))
    assert stages == STAGES
    assert_fully_fused(g, config, approximate="none")
    assert g.op_counts()["linear"] == 4 * n_layer + 1


def test_nanogpt_without_biases_fuses_completely(default_pipeline_checked) -> None:
    config = Config(2, 4, 32, bias=False, flash=False)
    torch.manual_seed(0)
    model = randomized(NanoGPT(config))
    g, stages = default_pipeline_checked(model, token_ids(config, 12))
    assert stages == STAGES
    assert_fully_fused(g, config, approximate="none")
    assert all(len(n.inputs) == 2 for n in g.nodes if n.op in ("linear", "layer_norm"))


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_mingpt_fuses_completely(shape, default_pipeline_checked) -> None:
    n_layer, n_head, n_embd, seq = shape
    config = Config(n_layer, n_head, n_embd)
    torch.manual_seed(0)
    model = randomized(MinGPT(config))
    g, stages = default_pipeline_checked(model, token_ids(config, seq))
    assert stages == STAGES
    assert_fully_fused(g, config, approximate="tanh")
    assert g.op_counts()["linear"] == 4 * n_layer + 1
