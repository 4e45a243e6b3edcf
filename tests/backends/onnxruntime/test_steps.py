"""The ORT step program: caches updated in place through IO binding (the OrtValue holding a
layer's cache keeps its buffer across steps), logits equal to the interpreter's step graphs,
on both lowerings of cached_attention (GroupQueryAttention, and the ScatterElements fallback for
head sizes that are not multiples of 8)."""

import dataclasses

import pytest
import torch

from cgc import models
from cgc.backends.onnxruntime.steps import OrtSteps
from cgc.generation import InterpreterSteps, trace_step_graphs


@pytest.mark.parametrize("name", ["tiny-111m", "tiny-2.7b"])  # head size 16, and 10
def test_steps_update_the_cache_in_place(name) -> None:
    config = dataclasses.replace(models.get_config(name), n_positions=32)
    graphs = trace_step_graphs(
        models.GPT(config, seed=0).eval(), batch=2, capacity=12, prompt_tokens=4
    )
    ort_steps = OrtSteps(graphs.prefill, graphs.decode)
    reference = InterpreterSteps(graphs.prefill, graphs.decode)
    buffers = [c.data_ptr() for c in ort_steps.caches]
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ort_steps.prefill(ids[:, :4]), reference.prefill(ids[:, :4]))
    for past in range(4, 12):
        got = ort_steps.decode(ids[:, past : past + 1], past)
        torch.testing.assert_close(got, reference.decode(ids[:, past : past + 1], past))
    assert [c.data_ptr() for c in ort_steps.caches] == buffers
    for cache, expected in zip(ort_steps.caches, reference.caches, strict=True):
        torch.testing.assert_close(torch.from_numpy(cache.numpy()), expected)
