"""Tensor files for `cgc run` (safetensors: no pickle) and seeded example inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cgc.errors import InputError
from cgc.ir import TensorType


def load_inputs(path: Path, types: list[tuple[str, TensorType]]) -> list[torch.Tensor]:
    """Inputs from a .safetensors file keyed by input name, checked against `types`."""
    if not path.is_file():
        raise InputError(f"{path}: no such inputs file")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    out = []
    for name, t in types:
        if name not in tensors:
            raise InputError(f"{path}: no tensor named {name!r} (has {', '.join(sorted(tensors))})")
        got = tensors[name]
        if tuple(got.shape) != t.shape or got.dtype != t.torch_dtype:
            raise InputError(f"{path}: {name} is {got.dtype} {list(got.shape)}, expected {t}")
        out.append(got)
    return out


def random_inputs(
    types: list[tuple[str, TensorType]], seed: int = 0, high: int = 2
) -> list[torch.Tensor]:
    """Seeded inputs of the given types: integers in [0, high), floats standard normal."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _, t in types:
        if t.is_float:
            out.append(torch.randn(t.shape, generator=gen).to(t.torch_dtype))
        else:
            out.append(torch.randint(0, high, t.shape, generator=gen, dtype=t.torch_dtype))
    return out


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write named tensors to a .safetensors file."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
