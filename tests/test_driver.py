"""The compile flow on random GPT configurations: interpreter and ORT agree with eager."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cgc
from cgc.models import GPT, GPTConfig, example_inputs


@st.composite
def gpt_configs(draw) -> tuple[GPTConfig, int, int]:
    heads = draw(st.integers(1, 4))
    d_head = draw(st.sampled_from([4, 6, 8, 10]))
    n_embd = heads * d_head
    config = GPTConfig(
        n_layer=draw(st.integers(1, 3)),
        n_embd=n_embd,
        n_head=heads,
        n_inner=draw(st.sampled_from([2, 4])) * n_embd,
        vocab_size=draw(st.integers(5, 80)),
        n_positions=32,
        mup=draw(st.booleans()),
    )
    return config, draw(st.integers(1, 2)), draw(st.integers(1, 12))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gpt_configs(), st.integers(0, 2**16))
def test_interpreter_and_onnxruntime_match_eager(case, seed: int) -> None:
    config, batch, seq = case
    module = GPT(config, seed=seed).eval()
    inputs = example_inputs(config, batch, seq, seed=seed)
    with torch.no_grad():
        expected = module(*inputs)
    graph = cgc.run_passes(cgc.trace(module, inputs), "default")
    counts = graph.op_counts()
    assert counts["attention"] == counts["gelu"] == config.n_layer
    assert counts["layer_norm"] == 2 * config.n_layer + 1
    (interpreted,) = cgc.ir.interpret(graph, *inputs)
    torch.testing.assert_close(interpreted, expected, atol=1e-4, rtol=1e-4)
    (ort,) = cgc.compile(module, inputs, backend="onnxruntime").run(*inputs)
    torch.testing.assert_close(ort, expected, atol=1e-4, rtol=1e-4)


def test_a_model_file_defining_a_dataclass_loads(tmp_path) -> None:
    """nanoGPT's style: a config dataclass in the model file itself; with postponed annotations
    dataclasses look the module up while the file runs."""
    from cgc.driver import load_model

    (tmp_path / "m.py").write_text(
        "from __future__ import annotations\n\n"
        "from dataclasses import dataclass\n"
        "import torch\n\n\n"
        "@dataclass\nclass Config:\n    width: int = 4\n\n\n"
        "def get_model():\n"
        "    return torch.nn.Linear(Config().width, 2), (torch.ones(1, 4),)\n"
    )
    loaded = load_model(str(tmp_path / "m.py"))
    assert loaded.module.in_features == 4
