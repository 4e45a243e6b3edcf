"""load_hf_checkpoint: numerically equal to transformers' GPT2LMHeadModel, clear errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cgc.errors import ModelError
from cgc.models import load_hf_checkpoint

transformers = pytest.importorskip("transformers")


def _save_hf(folder: Path, seed: int = 0, **overrides) -> "transformers.GPT2LMHeadModel":
    """Save a random tiny GPT2LMHeadModel as safetensors and return it in eval mode."""
    fields = dict(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=97,
        n_positions=64,
        activation_function="gelu",
        attn_implementation="eager",
        bos_token_id=0,
        eos_token_id=0,
    )
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields)).eval()
    # Weights far larger than GPT-2's 0.02 init push activations to where tanh-GELU and erf-GELU
    # differ; non-default biases and LayerNorms keep a mapping mistake from hiding behind 0/1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def _ids(batch: int = 3, seq_len: int = 20) -> torch.Tensor:
    return torch.randint(0, 97, (batch, seq_len), generator=torch.Generator().manual_seed(7))


def _assert_same_logits(hf, ours) -> None:
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        actual = ours(ids)
    assert (actual - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "overrides",
    [
        dict(n_inner=96),
        dict(n_inner=None),
        dict(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3),
        dict(n_head=8, layer_norm_epsilon=1e-3),
    ],
    ids=["n_inner", "n_inner_none", "dropout_in_eval", "eps_and_heads"],
)
def test_logits_match_transformers(tmp_path: Path, overrides: dict) -> None:
    hf = _save_hf(tmp_path, **overrides)
    ours = load_hf_checkpoint(tmp_path)
    expected_inner = overrides.get("n_inner") or 4 * 32
    assert ours.config.n_inner == expected_inner
    assert ours.config.layer_norm_epsilon == overrides.get("layer_norm_epsilon", 1e-5)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert not ours.training
    _assert_same_logits(hf, ours)


def test_keys_without_transformer_prefix_and_with_mask_buffers(tmp_path: Path) -> None:
    hf = _save_hf(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    # What older transformers versions saved: the causal mask as attn.bias, plus lm_head.
    renamed["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    renamed["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    renamed["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    save_file(renamed, weights)
    _assert_same_logits(hf, load_hf_checkpoint(str(tmp_path)))


def test_sharded_checkpoint(tmp_path: Path) -> None:
    hf = _save_hf(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:10],
        "model-00002-of-00002.safetensors": names[10:],
    }
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / file)
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_same_logits(hf, load_hf_checkpoint(tmp_path))


def test_half_precision_checkpoint_loads_as_fp32(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(weights).items()}, weights)
    model = load_hf_checkpoint(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope: no such folder; pass a Hugging Face checkpoint"):
        load_hf_checkpoint(tmp_path / "nope")


def test_missing_config(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelError, match=r"config\.json: missing"):
        load_hf_checkpoint(tmp_path)


def test_folder_without_safetensors(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no model\.safetensors; if it only has pytorch_model"):
        load_hf_checkpoint(tmp_path)


def test_empty_safetensors(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"model\.safetensors: not a readable safetensors file"):
        load_hf_checkpoint(tmp_path)


def test_corrupt_config(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config\.json: not valid JSON"):
        load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize("activation", ["relu", "gelu_new"])
def test_unsupported_activation(tmp_path: Path, activation: str) -> None:
    _save_hf(tmp_path, activation_function=activation)
    with pytest.raises(ModelError, match=f"activation_function '{activation}' is not supported"):
        load_hf_checkpoint(tmp_path)


def test_untied_head_is_rejected(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    tensors["lm_head.weight"] = torch.zeros_like(tensors["transformer.wte.weight"])
    save_file(tensors, weights)
    with pytest.raises(ModelError, match="lm_head.weight differs from transformer.wte.weight"):
        load_hf_checkpoint(tmp_path)


def test_missing_and_unexpected_tensors(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(weights)
    tensors["transformer.h.2.ln_1.weight"] = tensors.pop("transformer.h.1.ln_1.weight")
    save_file(tensors, weights)
    with pytest.raises(
        ModelError,
        match=r"missing: transformer\.h\.1\.ln_1\.weight; unexpected: transformer\.h\.2\.ln_1",
    ):
        load_hf_checkpoint(tmp_path)


def test_config_that_does_not_fit_the_weights(tmp_path: Path) -> None:
    _save_hf(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"transformer\.wte\.weight has shape \(97, 32\)"):
        load_hf_checkpoint(tmp_path)


def test_saved_checkpoints_load_back_mup_included(tmp_path) -> None:
    from cgc.models import build, load_hf_checkpoint, save_hf_checkpoint

    for name in ("tiny-111m", "tiny-111m-mup"):
        module = build(name, seed=3)
        folder = tmp_path / name
        folder.mkdir()
        save_hf_checkpoint(module.config, dict(module.named_parameters()), folder)
        loaded = load_hf_checkpoint(folder)
        assert loaded.config == module.config
        ids = torch.randint(0, 97, (1, 9))
        with torch.no_grad():
            assert torch.equal(loaded(ids), module(ids))
