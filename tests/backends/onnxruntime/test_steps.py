"""The ORT step program: caches updated in place through IO binding (the OrtValue holding a
layer's cache keeps its buffer across steps), logits equal to the interpreter's step graphs,
on both lowerings of cached_attention (GroupQueryAttention, and the ScatterElements fallback for
head sizes that are not multiples of 8), with batch 1 (decode reads unpacked weights) and 2."""

import dataclasses

import pytest
import torch

from cgc import models
from cgc.backends.onnxruntime.steps import OrtSteps
from cgc.generation import InterpreterSteps, trace_step_graphs


def _prepacking(steps) -> str:
    options = steps.session.get_session_options()
    try:
        off = options.get_session_config_entry("session.disable_prepacking") == "1"
    except RuntimeError:  # never set: ORT's default, prepacking on
        off = False
    return "off" if off else "on"


# head size 16, and 10 (ScatterElements)
@pytest.mark.parametrize("name,batch", [("tiny-111m", 1), ("tiny-111m", 2), ("tiny-2.7b", 2)])
def test_steps_update_the_cache_in_place(name, batch) -> None:
    config = dataclasses.replace(models.get_config(name), n_positions=32)
    graphs = trace_step_graphs(
        models.GPT(config, seed=0).eval(), batch=batch, capacity=12, prompt_tokens=4
    )
    ort_steps = OrtSteps(graphs.prefill, graphs.decode)
    assert _prepacking(ort_steps.prefill_session) == "on"
    assert _prepacking(ort_steps.decode_session) == ("off" if batch == 1 else "on")
    reference = InterpreterSteps(graphs.prefill, graphs.decode)
    buffers = [c.data_ptr() for c in ort_steps.caches]
    shape = (batch, 12)
    ids = torch.randint(0, config.vocab_size, shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ort_steps.prefill(ids[:, :4]), reference.prefill(ids[:, :4]))
    for past in range(4, 12):
        got = ort_steps.decode(ids[:, past : past + 1], past)
        torch.testing.assert_close(got, reference.decode(ids[:, past : past + 1], past))
    assert [c.data_ptr() for c in ort_steps.caches] == buffers
    for cache, expected in zip(ort_steps.caches, reference.caches, strict=True):
        torch.testing.assert_close(torch.from_numpy(cache.numpy()), expected)
