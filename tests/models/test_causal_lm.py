"""Checkpoint folders of other causal-LM families load through transformers, and training
writes them back in their own format."""

from pathlib import Path

import pytest
import torch

from cgc import driver
from cgc.models import load_hf_checkpoint
from cgc.models.causal_lm import CausalLM, save_causal_lm

transformers = pytest.importorskip("transformers")


@pytest.fixture
def llama(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    config = transformers.LlamaConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=48, vocab_size=300,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "llama", safe_serialization=True)
    return tmp_path / "llama", model


def test_a_llama_folder_loads_with_its_context_and_logits(llama) -> None:
    folder, model = llama
    loaded = driver.load_model(str(folder), seq_len=None)
    assert isinstance(loaded.module, CausalLM)
    (ids,) = loaded.example_inputs
    assert ids.shape == (1, 48) and int(ids.max()) < 300  # the whole context, its vocabulary
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(ids), model(ids).logits)


def test_trained_weights_save_as_the_familys_own_checkpoint(llama, tmp_path: Path) -> None:
    folder, _ = llama
    module = load_hf_checkpoint(folder)
    params = {n: p.detach() + 1.0 for n, p in module.named_parameters()}
    save_causal_lm(module, params, tmp_path / "saved")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    for name, p in back.named_parameters():
        torch.testing.assert_close(p, params[f"model.{name}"])
