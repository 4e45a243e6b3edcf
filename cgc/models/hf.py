"""Hugging Face GPT-2 checkpoints (the format Cerebras-GPT is published in): load one as a GPT,
and write a GPT's weights as one that `transformers` loads (what training saves). Other
families' checkpoints load through transformers (causal_lm.py).

Only safetensors is read or written: a pickle checkpoint can run arbitrary code when loaded.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cgc.errors import ModelError
from cgc.models.causal_lm import load_causal_lm, read_config
from cgc.models.config import GPTConfig
from cgc.models.gpt import GPT

_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_RESAVE = "re-save it with transformers' save_pretrained(), which writes model.safetensors"

# HF's Conv1D stores weights as [in, out]; nn.Linear wants [out, in].
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Causal-mask buffers that older transformers versions saved; we build the mask in forward.
_IGNORED = (".attn.bias", ".attn.masked_bias")

# muP has no GPT2Config fields; cgc records its own beside them (transformers ignores them and
# would compute the model without the muP multipliers).
_MUP = ("mup", "mup_base_width", "embeddings_scale")


def load_hf_checkpoint(path: str | Path) -> torch.nn.Module:
    """The model in a folder holding config.json and model.safetensors (or its shards): a GPT
    for GPT-2 checkpoints, any other causal-LM family through transformers (causal_lm.py)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(
            f"{folder}: no such folder; pass a Hugging Face checkpoint folder"
            " containing config.json and model.safetensors"
        )
    raw = read_config(folder)
    if raw.get("model_type") != "gpt2":
        return load_causal_lm(folder, raw.get("model_type"))
    config = _gpt_config(raw, folder / "config.json")
    tensors = _read_tensors(folder)
    model = GPT(config, device="meta")
    model.load_state_dict(_to_state_dict(tensors, model, folder), assign=True)
    model.tie_weights()
    return model.eval()


def _gpt_config(raw: dict[str, Any], file: Path) -> GPTConfig:
    """Map GPT2Config fields to GPTConfig, refusing variants the GPT module does not compute."""
    # GPT2Config defaults to the tanh approximation ("gelu_new"); ours is the exact erf GELU.
    activation = raw.get("activation_function", "gelu_new")
    if activation != "gelu":
        raise ModelError(
            f"{file}: activation_function {activation!r} is not supported; only the exact 'gelu'"
            " (as in Cerebras-GPT) is"
        )
    unsupported = {
        "scale_attn_weights": False,
        "scale_attn_by_inverse_layer_idx": True,
        "add_cross_attention": True,
        "tie_word_embeddings": False,
    }
    for key, bad in unsupported.items():
        if key in raw and raw[key] == bad:
            raise ModelError(f"{file}: {key}={bad} is not supported by cgc's GPT")
    try:
        n_embd = int(raw["n_embd"])
        mup = {key: raw[f"cgc_{key}"] for key in _MUP if f"cgc_{key}" in raw}
        return GPTConfig(
            n_layer=int(raw["n_layer"]),
            n_embd=n_embd,
            n_head=int(raw["n_head"]),
            n_inner=int(raw.get("n_inner") or 4 * n_embd),
            vocab_size=int(raw["vocab_size"]),
            n_positions=int(raw["n_positions"]),
            layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
            **mup,
        )
    except KeyError as err:
        raise ModelError(f"{file}: missing field {err.args[0]!r}; restore the GPT2Config") from err
    except (TypeError, ValueError) as err:
        raise ModelError(f"{file}: malformed field ({err}); restore the GPT2Config") from err


def save_hf_checkpoint(
    config: GPTConfig,
    state: Mapping[str, torch.Tensor],
    folder: str | Path,
    *,
    eos_id: int | None = None,
) -> None:
    """Write `state` (the GPT's parameter names) into `folder` as config.json and
    model.safetensors in GPT2LMHeadModel's layout: Conv1D weights [in, out], the LM head tied
    to the embedding and left out, as save_pretrained writes them. `eos_id` is the tokenizer's
    end-of-text token (GPT2Config's default, 50256, would lie outside a smaller vocabulary)."""
    folder = Path(folder)
    fields = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_inner": config.n_inner,
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "activation_function": "gelu",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }
    if config.mup:
        fields |= {f"cgc_{key}": getattr(config, key) for key in _MUP}
    (folder / "config.json").write_text(json.dumps(fields, indent=2) + "\n")
    tensors = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue
        if name.endswith(_CONV1D):
            tensor = tensor.t()
        tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(folder / _WEIGHTS), metadata={"format": "pt"})


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, from one file or from the shards its index lists."""
    single = folder / _WEIGHTS
    if single.is_file():
        return _load(single)
    index = folder / _INDEX
    if not index.is_file():
        raise ModelError(f"{folder}: no {_WEIGHTS}; if it only has pytorch_model.bin, {_RESAVE}")
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as err:
        raise ModelError(f"{index}: unreadable shard index ({err}); {_RESAVE}") from err
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        file = folder / shard
        if not file.is_file():
            raise ModelError(f"{file}: shard listed in {_INDEX} is missing; download it again")
        tensors.update(_load(file))
    return tensors


def _load(file: Path) -> dict[str, torch.Tensor]:
    """One safetensors file; any failure to parse becomes a ModelError naming the file."""
    try:
        return load_file(file)
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ModelError(
            f"{file}: not a readable safetensors file ({err}); download it again"
        ) from err


def _to_state_dict(
    tensors: dict[str, torch.Tensor], model: GPT, folder: Path
) -> dict[str, torch.Tensor]:
    """Rename, transpose and check HF tensors against the GPT's own parameter names and shapes."""
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.endswith(_IGNORED):
            continue
        keep = key.startswith("transformer.") or key == "lm_head.weight"
        name = key if keep else f"transformer.{key}"
        if name.endswith(_CONV1D) and tensor.dim() == 2:
            tensor = tensor.t()
        renamed[name] = tensor.to(torch.float32).contiguous()

    head = renamed.pop("lm_head.weight", None)
    wte = renamed.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ModelError(
            f"{folder}: lm_head.weight differs from transformer.wte.weight; cgc's GPT needs tied"
            " input/output embeddings"
        )

    expected = {name: p.shape for name, p in model.state_dict().items() if name != "lm_head.weight"}
    missing = sorted(expected.keys() - renamed.keys())
    unexpected = sorted(renamed.keys() - expected.keys())
    if missing or unexpected:
        raise ModelError(
            f"{folder}: tensors do not match config.json (missing: {_names(missing)};"
            f" unexpected: {_names(unexpected)}); check that config.json belongs to these weights"
        )
    for name, shape in expected.items():
        if renamed[name].shape != shape:
            raise ModelError(
                f"{folder}: {name} has shape {tuple(renamed[name].shape)}, config.json implies"
                f" {tuple(shape)}; check that config.json belongs to these weights"
            )
    renamed["lm_head.weight"] = renamed["transformer.wte.weight"]
    return renamed


def _names(names: list[str]) -> str:
    """A short list for a one-line message."""
    if not names:
        return "none"
    shown = ", ".join(names[:3])
    return shown if len(names) <= 3 else f"{shown} and {len(names) - 3} more"
