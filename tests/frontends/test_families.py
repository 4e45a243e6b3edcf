"""GPT families as people hand them to cgc fuse completely and match eager PyTorch.

The models are tests/zoo/families.py's: tiny configurations (2 layers, width 64, 4 heads) of the
Hugging Face causal-LM families called with a left-padded attention_mask, and PyTorch's own
transformer modules. Each is traced once per sequence length (16 and 64); the optimised graph
must hold exactly the fused ops listed (one `attention` per attention block, self and cross,
with the family's shared key-value heads and sliding windows), no softmax, erf, tanh, cos, sin
or stray matmul, and the interpreter, ONNX Runtime and the simulated wafer (the cerebras
backend on a 64x64 fabric) must match eager within 1e-4 at every position, padding included.
The wafer runs at sequence length 16 (the sliding windows of 8 are shorter); CGC_SLOW=1 runs
it at 64 too (measured: every family within 1.1e-6 at both lengths).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnxruntime as ort
import pytest
import torch
from zoo import families

import cgc
from cgc.driver import compile_graph, run_passes, trace
from cgc.ir import interpret

SEQ_LENS = (16, 64)
WAFER_SEQ_LENS = SEQ_LENS if os.environ.get("CGC_SLOW") == "1" else (16,)
LEFTOVERS = {"softmax", "erf", "tanh", "cos", "sin", "matmul"}
FUSED = {"attention", "rotary_embedding", "rms_norm", "swiglu", "layer_norm", "gelu"}


@dataclass(frozen=True)
class Expected:
    """What a family's optimised graph holds."""

    counts: dict[str, int]  # fused ops and activations, exactly
    kv_heads: int = 4  # of every attention
    windows: tuple[int, ...] = (0, 0)  # sliding windows of the attentions, in any order


GPT2 = {"attention": 2, "layer_norm": 5, "gelu": 2, "linear": 9}
ROTARY_PARALLEL = {"attention": 2, "rotary_embedding": 4, "layer_norm": 3, "gelu": 2}
LLAMA = {"attention": 2, "rotary_embedding": 4, "rms_norm": 5, "swiglu": 2, "linear": 11}
ENCODER_GPT = {"attention": 2, "layer_norm": 5, "linear": 9}

EXPECTED: dict[str, Expected] = {
    "gpt2": Expected(GPT2),
    "gpt_bigcode": Expected(GPT2, kv_heads=1),
    "gpt_neo": Expected({"attention": 2, "layer_norm": 5, "gelu": 2, "linear": 13}, windows=(0, 8)),
    "gpt_neox": Expected(
        {"attention": 2, "rotary_embedding": 4, "layer_norm": 5, "gelu": 2, "linear": 9}
    ),
    "gptj": Expected({**ROTARY_PARALLEL, "linear": 13}),
    "codegen": Expected({**ROTARY_PARALLEL, "linear": 9}),
    "opt": Expected({"attention": 2, "layer_norm": 5, "relu": 2, "linear": 13}),
    "bloom": Expected({"attention": 2, "layer_norm": 6, "gelu": 2, "linear": 9}),
    "falcon": Expected({**ROTARY_PARALLEL, "linear": 9}, kv_heads=1),
    "llama": Expected(LLAMA),
    "llama_gqa": Expected(LLAMA, kv_heads=2),
    "mistral": Expected(LLAMA, kv_heads=2, windows=(8, 8)),
    "qwen2": Expected(LLAMA, kv_heads=2),
    "phi": Expected({**ROTARY_PARALLEL, "linear": 13}),
    "encoder_gpt_pre_gelu": Expected({**ENCODER_GPT, "gelu": 2}),
    "encoder_gpt_post_relu": Expected({**ENCODER_GPT, "relu": 2}),
    "encoder_gpt_seq_first": Expected({**ENCODER_GPT, "relu": 2}),
    # 2 encoder self-attentions, and per decoder layer a causal self- and a cross-attention
    "nn_transformer": Expected(
        {"attention": 6, "layer_norm": 12, "relu": 4, "linear": 23}, windows=(0,) * 6
    ),
}


def test_every_zoo_family_has_expectations() -> None:
    assert list(EXPECTED) == families.NAMES


@pytest.fixture(scope="module", params=[(f, s) for f in EXPECTED for s in SEQ_LENS], ids=str)
def compiled(request):
    """(expected, model, inputs, optimised graph, runs): traced and fused once per config."""
    name, seq = request.param
    model, inputs = families.build(name, seq)
    graph = run_passes(trace(model, inputs), "default")
    runs = {
        "interpreter": lambda *x: interpret(graph, *x),
        "onnxruntime": compile_graph(graph.copy(), "onnxruntime").run,
    }
    if seq in WAFER_SEQ_LENS:
        runs["cerebras"] = compile_graph(graph.copy(), "cerebras", target="fabric:64x64").run
    return EXPECTED[name], model, inputs, graph, runs


def test_fuses_every_block(compiled) -> None:
    expected, _, _, graph, _ = compiled
    counts = graph.op_counts()
    assert {op: counts.get(op, 0) for op in expected.counts} == expected.counts, counts
    assert FUSED & set(counts) == FUSED & set(expected.counts), counts
    assert not LEFTOVERS & set(counts), counts
    attentions = [n.attrs for n in graph.nodes if n.op == "attention"]
    assert [a["num_kv_heads"] for a in attentions] == [expected.kv_heads] * len(attentions)
    assert sorted(a["window"] for a in attentions) == sorted(expected.windows)


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
    model = families.CausalLM(families.hf_model("bloom")).eval()
    ids = families.ids(16)
    graph = run_passes(trace(model, (ids, None)), "default")
    slopes = [0.25, 0.0625, 0.015625, 0.00390625]  # 2^(-8/heads · h), h = 1..4
    attrs = [n.attrs for n in graph.nodes if n.op == "attention"]
    assert [(a["alibi_slopes"], a["causal"]) for a in attrs] == [(slopes, True)] * 2
    assert all(len(n.inputs) == 3 for n in graph.nodes if n.op == "attention")
    with torch.no_grad():
        want = model(ids, None)
    (got,) = compile_graph(graph, "onnxruntime").run(ids)
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["llama_gqa", "gptj"])
def test_onnx_exports_fuse_like_the_traced_models(name: str, tmp_path) -> None:
    """torch.onnx.export's (dynamo) file of a family reaches the traced graph's fused ops, and
    runs as ONNX Runtime runs the file.

    Llama with grouped-query attention (half-rotation RoPE, RMSNorm, SwiGLU) and GPT-J
    (interleaved partial RoPE, a parallel block) stand for the rest; bench/families.py prints
    every family. The exporter turns the padding mask into a 0 / finfo.min one, so a fully
    padded query attends evenly to every key in the file, not to none as in eager: the file
    is the reference here (as in `cgc check`).
    """
    model, inputs = families.build(name, 16)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=True, verbose=False)
    graph = run_passes(cgc.load_onnx(path), "default")
    expected = EXPECTED[name]
    counts = graph.op_counts()
    assert {op: counts.get(op, 0) for op in expected.counts} == expected.counts, counts
    assert not LEFTOVERS & set(counts), counts
    attentions = [n.attrs for n in graph.nodes if n.op == "attention"]
    assert [a["num_kv_heads"] for a in attentions] == [expected.kv_heads] * len(attentions)
    assert sorted(a["window"] for a in attentions) == sorted(expected.windows)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    want = torch.as_tensor(session.run(None, feeds)[0])
    (got,) = compile_graph(graph, "onnxruntime").run(*inputs)
    assert (got - want).abs().max().item() <= 1e-4
