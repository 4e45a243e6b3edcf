"""Registry: names, auto device, example inputs, errors."""

import pytest
import torch

from cgc.errors import ModelError
from cgc.models import CEREBRAS_GPT, TINY, available, build, example_inputs, get_config


def test_available_lists_every_builtin() -> None:
    names = available()
    assert names == list(CEREBRAS_GPT) + list(TINY)
    assert len(names) == 28
    assert {"cerebras-gpt-13b-mup", "tiny-2.7b", "tiny-13b-mup"} <= set(names)


def test_unknown_name() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'gpt-5'; run `cgc models`"):
        get_config("gpt-5")
    with pytest.raises(ModelError, match="run `cgc models`"):
        build("gpt-5")


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("cerebras-gpt-111m", "cpu"),
        ("cerebras-gpt-590m", "cpu"),
        ("cerebras-gpt-1.3b", "meta"),
        ("cerebras-gpt-13b-mup", "meta"),
    ],
)
def test_auto_device(name: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []
    monkeypatch.setattr(
        "cgc.models.registry.GPT", lambda config, seed, device: chosen.append(device)
    )
    build(name)
    assert chosen == [device]


def test_build_is_seeded_and_respects_device() -> None:
    a, b = build("tiny-6.7b", seed=1), build("tiny-6.7b", seed=1)
    assert torch.equal(a.transformer.h[1].attn.c_attn.weight, b.transformer.h[1].attn.c_attn.weight)
    assert a.config == TINY["tiny-6.7b"]
    assert all(p.is_meta for p in build("tiny-6.7b", device="meta").parameters())


def test_example_inputs() -> None:
    config = get_config("cerebras-gpt-111m")
    (ids,) = example_inputs(config, batch=4, seq_len=2048, seed=3)
    assert ids.shape == (4, 2048) and ids.dtype == torch.int64
    assert 0 <= ids.min().item() and ids.max().item() < 50257
    assert ids.max().item() > 40000  # spans the vocabulary, not a small range
    assert torch.equal(ids, example_inputs(config, batch=4, seq_len=2048, seed=3)[0])
    assert not torch.equal(ids, example_inputs(config, batch=4, seq_len=2048, seed=4)[0])
    assert example_inputs(config)[0].shape == (1, 128)


def test_example_inputs_default_length_fits_tiny_context() -> None:
    (ids,) = example_inputs(TINY["tiny-111m"])
    assert ids.shape == (1, 64) and ids.max().item() < 97


def test_example_inputs_too_long() -> None:
    with pytest.raises(ModelError, match="seq_len 65 is outside 1..64"):
        example_inputs(TINY["tiny-111m"], seq_len=65)
    with pytest.raises(ModelError, match="batch 0 must be at least 1"):
        example_inputs(TINY["tiny-111m"], batch=0)


def test_built_model_runs_on_example_inputs() -> None:
    model = build("tiny-13b-mup")
    (ids,) = example_inputs(model.config, batch=2, seq_len=16)
    assert model(ids).shape == (2, 16, 97)
