"""Greedy generation on the model families through the kv-cache step graphs equals eager PyTorch
recomputing the full sequence at every step, on ONNX Runtime and the interpreter: tiny Llama
with grouped-query attention (also on the simulated wafer), Mistral (sliding window 8, shorter
than the sequences), BLOOM (ALiBi), Falcon (multi-query, rotary) and GPT-NeoX (partial rotary),
two prompts of different lengths each. The decode graph caches the key-value heads only and
keeps each attention's window and ALiBi slopes.
"""

import pytest
import torch
from zoo import families

from cgc.generation import trace_step_graphs
from cgc.generation.check import check_generation

NEW = 6
LENGTHS = (12, 7)  # the longer prompt and its new tokens pass Mistral's window of 8

# family -> (key-value heads of the cache, window, ALiBi) of every cached_attention
EXPECTED = {
    "llama_gqa": (2, 0, False),
    "mistral": (2, 8, False),
    "bloom": (4, 0, True),
    "falcon": (1, 0, False),
    "gpt_neox": (4, 0, False),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_greedy_tokens_equal_eager_full_recomputation(name) -> None:
    model, _ = families.build(name, 16)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, families.VOCAB, (n,), generator=gen).tolist() for n in LENGTHS]
    report = check_generation(name, model, prompts, NEW, ["onnxruntime"])
    assert report.ok, report.text()
    for target, r in report.results.items():
        assert r.equal == r.total == NEW * len(prompts), target
        assert r.max_abs <= 1e-4, (target, r.max_abs)

    kv_heads, window, alibi = EXPECTED[name]
    decode = trace_step_graphs(model, batch=2, capacity=17, prompt_tokens=7).decode
    cached = [n for n in decode.nodes if n.op == "cached_attention"]
    assert len(cached) == 2
    for node in cached:
        assert node.inputs[3].shape == (2, kv_heads, 17, 16)
        assert node.attrs["num_kv_heads"] == kv_heads
        assert node.attrs["window"] == window
        assert len(node.attrs["alibi_slopes"]) == (4 if alibi else 0)


def test_grouped_query_greedy_tokens_on_the_wafer_equal_eager() -> None:
    """The wafer's decode kernel caches Llama's 2 key-value heads, each for 2 query heads."""
    model, _ = families.build("llama_gqa", 16)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, families.VOCAB, (n,), generator=gen).tolist() for n in LENGTHS]
    options = {"cerebras": {"target": "fabric:64x64"}}
    report = check_generation("llama_gqa", model, prompts, 4, ["cerebras"], options=options)
    assert report.ok, report.text()
    r = report.results["cerebras"]
    assert r.equal == r.total == 4 * len(prompts)
    assert r.max_abs <= 1e-4, r.max_abs
