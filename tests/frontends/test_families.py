"""GPT families as people hand them to cgc fuse completely and match eager PyTorch.

Tiny configurations (2 layers, width 64, 4 heads, seeded random weights) of the Hugging Face
causal-LM families, called with a left-padded attention_mask, and PyTorch's own transformer
modules (tests/zoo: a GPT of nn.TransformerEncoderLayer blocks, an nn.Transformer
encoder-decoder). Each model is traced once per sequence length (16 and 64); the optimised
graph must hold exactly the fused ops listed (one `attention` per attention block, self and
cross), no softmax, erf, tanh, cos or sin, and the interpreter and ONNX Runtime (and the wafer,
for the families its kernels cover) must match eager within 1e-4 at every position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import transformers
from torch import nn
from zoo import torch_encoder_gpt, torch_transformer

from cgc.driver import compile_graph, run_passes, trace
from cgc.ir import interpret

SEQ_LENS = (16, 64)
LEFTOVERS = {"softmax", "erf", "tanh", "cos", "sin", "matmul"}
VOCAB = 100
COMMON = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)


class CausalLM(nn.Module):
    """A Hugging Face causal LM returning only the logits, without a KV cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits


@dataclass(frozen=True)
class Family:
    """How to build a family's tiny model, and what its optimised graph holds."""

    config: Callable[[], object] | None  # a transformers config, or None for a zoo model
    counts: dict[str, int]  # fused ops, exactly
    kv_heads: int = 4
    windows: tuple[int, ...] = (0, 0)  # per layer
    cerebras: bool = False  # the wafer's kernels cover it today
    zoo: Callable[[], tuple[nn.Module, Callable[[int], tuple]]] | None = field(default=None)


def _llama(**options) -> dict[str, int]:
    return dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        **options,
        **COMMON,
    )


LLAMA = {"attention": 2, "rotary_embedding": 4, "rms_norm": 5, "swiglu": 2, "linear": 11}
GPT2 = {"attention": 2, "layer_norm": 5, "gelu": 2, "linear": 9}
ROTARY_PARALLEL = {"attention": 2, "rotary_embedding": 4, "layer_norm": 3, "gelu": 2}


def _encoder_gpt(norm_first: bool, activation: str, batch_first: bool):
    def build():
        torch.manual_seed(0)
        config = torch_encoder_gpt.Config(
            norm_first=norm_first, activation=activation, batch_first=batch_first
        )
        model = torch_encoder_gpt.EncoderGPT(config).eval()
        return model, lambda seq: (_ids(seq),)

    return build


def _seq2seq():
    torch.manual_seed(0)
    model = torch_transformer.Seq2Seq(torch_transformer.Config()).eval()
    return model, lambda seq: (_ids(seq + 8, seed=2), _ids(seq))


def _ids(seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(seed))


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        lambda: transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, **COMMON),
        GPT2,
        cerebras=True,
    ),
    "gpt_bigcode": Family(
        lambda: transformers.GPTBigCodeConfig(
            n_layer=2, n_embd=64, n_head=4, multi_query=True, **COMMON
        ),
        GPT2,
        kv_heads=1,
    ),
    "gpt_neo": Family(
        lambda: transformers.GPTNeoConfig(
            num_layers=2,
            hidden_size=64,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            **COMMON,
        ),
        {"attention": 2, "layer_norm": 5, "gelu": 2, "linear": 13},
        windows=(0, 8),
    ),
    "gpt_neox": Family(
        lambda: transformers.GPTNeoXConfig(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=256,
            rotary_pct=0.5,
            **COMMON,
        ),
        {"attention": 2, "rotary_embedding": 4, "layer_norm": 5, "gelu": 2, "linear": 9},
    ),
    "gptj": Family(
        lambda: transformers.GPTJConfig(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, **COMMON),
        {**ROTARY_PARALLEL, "linear": 13},
    ),
    "codegen": Family(
        lambda: transformers.CodeGenConfig(
            n_layer=2, n_embd=64, n_head=4, rotary_dim=8, n_ctx=128, **COMMON
        ),
        {**ROTARY_PARALLEL, "linear": 9},
    ),
    "opt": Family(
        lambda: transformers.OPTConfig(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            ffn_dim=256,
            word_embed_proj_dim=64,
            **COMMON,
        ),
        {"attention": 2, "layer_norm": 5, "relu": 2, "linear": 13},
    ),
    "bloom": Family(
        lambda: transformers.BloomConfig(n_layer=2, hidden_size=64, n_head=4, **COMMON),
        {"attention": 2, "layer_norm": 6, "gelu": 2, "linear": 9},
    ),
    "falcon": Family(
        lambda: transformers.FalconConfig(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            new_decoder_architecture=False,
            multi_query=True,
            **COMMON,
        ),
        {**ROTARY_PARALLEL, "linear": 9},
        kv_heads=1,
    ),
    "llama": Family(lambda: transformers.LlamaConfig(**_llama(num_key_value_heads=4)), LLAMA),
    "llama_gqa": Family(
        lambda: transformers.LlamaConfig(**_llama(num_key_value_heads=2)), LLAMA, kv_heads=2
    ),
    "mistral": Family(
        lambda: transformers.MistralConfig(**_llama(num_key_value_heads=2, sliding_window=8)),
        LLAMA,
        kv_heads=2,
        windows=(8, 8),
    ),
    "qwen2": Family(
        lambda: transformers.Qwen2Config(**_llama(num_key_value_heads=2)), LLAMA, kv_heads=2
    ),
    "phi": Family(
        lambda: transformers.PhiConfig(**_llama(partial_rotary_factor=0.5)),
        {**ROTARY_PARALLEL, "linear": 13},
    ),
    "encoder_gpt_pre_gelu": Family(
        None,
        {"attention": 2, "layer_norm": 5, "gelu": 2, "linear": 9},
        zoo=_encoder_gpt(norm_first=True, activation="gelu", batch_first=True),
    ),
    "encoder_gpt_post_relu": Family(
        None,
        {"attention": 2, "layer_norm": 5, "relu": 2, "linear": 9},
        zoo=_encoder_gpt(norm_first=False, activation="relu", batch_first=True),
    ),
    "encoder_gpt_seq_first": Family(
        None,
        {"attention": 2, "layer_norm": 5, "relu": 2, "linear": 9},
        zoo=_encoder_gpt(norm_first=False, activation="relu", batch_first=False),
    ),
    # 2 encoder self-attentions; per decoder layer a causal self- and a cross-attention
    "nn_transformer": Family(
        None,
        {"attention": 6, "layer_norm": 12, "relu": 4, "linear": 23},
        windows=(0,) * 6,
        zoo=_seq2seq,
    ),
}


def _left_padded(seq: int) -> torch.Tensor:
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, :5] = 0
    return mask


def _build(name: str, seq: int) -> tuple[nn.Module, tuple]:
    family = FAMILIES[name]
    if family.zoo is not None:
        model, inputs = family.zoo()
        return model, inputs(seq)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(family.config()).eval()
    return CausalLM(model).eval(), (_ids(seq), _left_padded(seq))


@pytest.fixture(scope="module", params=[(f, s) for f in FAMILIES for s in SEQ_LENS], ids=str)
def compiled(request):
    """(family, model, inputs, optimised graph, runs): traced and fused once per config."""
    name, seq = request.param
    model, inputs = _build(name, seq)
    graph = run_passes(trace(model, inputs), "default")
    runs = {
        "interpreter": lambda *x: interpret(graph, *x),
        "onnxruntime": compile_graph(graph.copy(), "onnxruntime").run,
    }
    if FAMILIES[name].cerebras:
        runs["cerebras"] = compile_graph(graph.copy(), "cerebras", target="fabric:64x64").run
    return FAMILIES[name], model, inputs, graph, runs


def test_fuses_every_block(compiled) -> None:
    family, _, _, graph, _ = compiled
    counts = graph.op_counts()
    assert {op: counts.get(op, 0) for op in family.counts} == family.counts, counts
    fused = {"attention", "rotary_embedding", "rms_norm", "swiglu", "layer_norm", "gelu"}
    assert {op for op in fused if op in counts} == fused & set(family.counts), counts
    assert not LEFTOVERS & set(counts), counts
    attentions = [n.attrs for n in graph.nodes if n.op == "attention"]
    assert [a["num_kv_heads"] for a in attentions] == [family.kv_heads] * len(attentions)
    assert sorted(a["window"] for a in attentions) == sorted(family.windows)


def test_every_target_matches_eager(compiled) -> None:
    _, model, inputs, _, runs = compiled
    with torch.no_grad():
        want = model(*inputs)
    errors = {}
    for target, run in runs.items():
        (got,) = run(*inputs)
        errors[target] = (got - want).abs().max().item() if got.isfinite().all() else float("inf")
    assert max(errors.values()) <= 1e-4, errors


def test_bloom_without_a_mask_takes_its_alibi_slopes() -> None:
    """Positions known at compile time: BLOOM's ALiBi bias becomes the alibi_slopes attr."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(FAMILIES["bloom"].config()).eval()
    ids = _ids(16)
    graph = run_passes(trace(CausalLM(model), (ids, None)), "default")
    slopes = [0.25, 0.0625, 0.015625, 0.00390625]  # 2^(-8/heads · h), h = 1..4
    attrs = [n.attrs for n in graph.nodes if n.op == "attention"]
    assert [(a["alibi_slopes"], a["causal"]) for a in attrs] == [(slopes, True)] * 2
    assert all(len(n.inputs) == 3 for n in graph.nodes if n.op == "attention")
    with torch.no_grad():
        want = CausalLM(model)(ids, None)
    (got,) = compile_graph(graph, "onnxruntime").run(ids)
    assert (got - want).abs().max().item() <= 1e-4
