"""Must-show 1 and 2: greedy generation through the kv-cache step graphs gives exactly the tokens
of eager PyTorch recomputing the full sequence at every step, with every step's logits within
1e-4, on ONNX Runtime and the interpreter: every built-in tiny model, Hugging Face GPT-2 (which
must also equal its own `generate`), nanoGPT- and minGPT-style models, and a batch of prompts of
different lengths. 64 new tokens after a 32-token prompt; tiny configs get 128 positions so both
fit their context.

The wafer simulator (fp32, a small fabric) is checked the same way on three of these models;
`CGC_SLOW=1` runs it on the whole list.
"""

import dataclasses
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from zoo import mingpt, nanogpt

from cgc import models
from cgc.generation.check import check_generation, eager_greedy

PROMPT, NEW = 32, 64
TINY = [name for name in models.available() if name.startswith("tiny-")]
SLOW = not os.environ.get("CGC_SLOW")
WAFER = {"cerebras": {"target": "fabric:32x32"}}


def prompts(vocab: int, lengths=(PROMPT,)) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def assert_passes(report) -> None:
    assert report.ok, report.text()
    for target, r in report.results.items():
        assert r.equal == r.total == NEW * len(report.prompts), target
        assert r.max_abs <= 1e-4, (target, r.max_abs)


@pytest.mark.parametrize("name", TINY)
def test_builtin_tiny_models(name):
    config = dataclasses.replace(models.get_config(name), n_positions=128)
    module = models.GPT(config, seed=0).eval()
    report = check_generation(name, module, prompts(config.vocab_size), NEW, ["onnxruntime"])
    assert_passes(report)


def test_batch_of_prompts_of_different_lengths():
    config = dataclasses.replace(models.get_config("tiny-111m"), n_positions=128)
    module = models.GPT(config, seed=0).eval()
    batch = prompts(config.vocab_size, lengths=(32, 9, 27, 20))
    report = check_generation("tiny-111m", module, batch, NEW, ["onnxruntime"])
    assert_passes(report)


class LogitsOnly(torch.nn.Module):
    """Hugging Face GPT-2 returning the logits alone, called without its cache."""

    def __init__(self, model: GPT2LMHeadModel) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def test_hugging_face_gpt2_equals_its_own_generate():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=128)
    hf_model = GPT2LMHeadModel(config).eval()
    model = LogitsOnly(hf_model)
    (prompt,) = prompts(config.vocab_size)
    report = check_generation("gpt2", model, [prompt], NEW, ["onnxruntime"])
    assert_passes(report)
    with torch.no_grad():
        ids = torch.tensor([prompt])
        hf = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
        )
    assert hf[0, PROMPT:].tolist() == eager_greedy(model, prompt, NEW)[0]


@pytest.mark.parametrize("style", [nanogpt, mingpt], ids=["nanogpt", "mingpt"])
def test_zoo_models_without_a_cache(style):
    torch.manual_seed(0)
    config = style.GPTConfig(block_size=128)
    module = style.GPT(config).eval()
    report = check_generation(
        style.__name__, module, prompts(config.vocab_size), NEW, ["onnxruntime"]
    )
    assert_passes(report)


@pytest.mark.skipif(not os.environ.get("CGC_SLOW"), reason="111M: set CGC_SLOW=1 (minutes)")
def test_cerebras_gpt_111m():
    module = models.build("cerebras-gpt-111m").eval()
    report = check_generation("cerebras-gpt-111m", module, prompts(50257), NEW, ["onnxruntime"])
    print(report.text())
    assert_passes(report)


@pytest.fixture
def one_thread():
    """The simulator runs many tiny tile operations: one torch thread avoids waking a pool for
    each (3x faster on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str) -> torch.nn.Module:
    config = dataclasses.replace(models.get_config(name), n_positions=128)
    return models.GPT(config, seed=0).eval()


def zoo(style) -> torch.nn.Module:
    torch.manual_seed(0)
    return style.GPT(style.GPTConfig(block_size=128)).eval()


def hugging_face() -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=128)
    return LogitsOnly(GPT2LMHeadModel(config).eval())


WAFER_MODELS = {
    "tiny-111m": lambda: tiny("tiny-111m"),
    "nanogpt": lambda: zoo(nanogpt),
    "gpt2": hugging_face,
}
EVERY_MODEL = {
    **{name: (lambda name=name: tiny(name)) for name in TINY},
    "nanogpt": lambda: zoo(nanogpt),
    "mingpt": lambda: zoo(mingpt),
    "gpt2": hugging_face,
}


def check_on_the_wafer(name: str, module: torch.nn.Module) -> None:
    embeddings = (m for m in module.modules() if isinstance(m, torch.nn.Embedding))
    vocab = next(embeddings).num_embeddings  # the token embedding comes first
    report = check_generation(name, module, prompts(vocab), NEW, ["cerebras"], options=WAFER)
    print(report.text())
    assert_passes(report)


@pytest.mark.parametrize("name", WAFER_MODELS)
def test_the_wafer_simulator_generates_eagers_tokens(name, one_thread):
    check_on_the_wafer(name, WAFER_MODELS[name]())


@pytest.mark.skipif(SLOW, reason="every model on the wafer simulator: set CGC_SLOW=1 (minutes)")
@pytest.mark.parametrize("name", EVERY_MODEL)
def test_the_wafer_simulator_on_every_model(name, one_thread):
    check_on_the_wafer(name, EVERY_MODEL[name]())


@pytest.mark.skipif(SLOW, reason="a batch on the wafer simulator: set CGC_SLOW=1 (minutes)")
def test_the_wafer_simulator_on_a_batch_of_prompts(one_thread):
    module = tiny("tiny-111m")
    batch = prompts(module.config.vocab_size, lengths=(32, 9, 27, 20))
    report = check_generation("tiny-111m", module, batch, NEW, ["cerebras"], options=WAFER)
    print(report.text())
    assert_passes(report)
