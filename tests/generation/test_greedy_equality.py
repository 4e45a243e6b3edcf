"""Must-show 1 and 2: greedy generation through the kv-cache step graphs gives exactly the tokens
of eager PyTorch recomputing the full sequence at every step, with every step's logits within
1e-4, on ONNX Runtime and the interpreter: every built-in tiny model, Hugging Face GPT-2 (which
must also equal its own `generate`), nanoGPT- and minGPT-style models, and a batch of prompts of
different lengths. 64 new tokens after a 32-token prompt; tiny configs get 128 positions so both
fit their context.
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
