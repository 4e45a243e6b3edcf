"""Shared helpers: random inputs and weights for a graph, and export-then-run on ORT."""

from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch

from cgc.backends.onnxruntime import OrtProgram, to_onnx
from cgc.ir import Graph, TensorType


def _random_tensor(t: TensorType, gen: torch.Generator) -> torch.Tensor:
    """Floats ~N(0, 1), integers in [0, 5), booleans half true."""
    if t.is_float:
        return torch.randn(t.shape, generator=gen).to(t.torch_dtype)
    if t.dtype == "bool":
        return torch.rand(t.shape, generator=gen) > 0.5
    return torch.randint(0, 5, t.shape, generator=gen).to(t.torch_dtype)


@pytest.fixture
def random_tensor() -> Callable[[TensorType, torch.Generator], torch.Tensor]:
    """A random tensor of a type: floats ~N(0, 1), integers in [0, 5), booleans half true."""
    return _random_tensor


@pytest.fixture
def with_weights() -> Callable[[Graph], Graph]:
    """Give every parameter of a graph random data (seeded)."""

    def fill(g: Graph) -> Graph:
        gen = torch.Generator().manual_seed(1)
        for name, v in g.params.items():
            g.weights[name] = _random_tensor(v.type, gen)
        return g

    return fill


@pytest.fixture
def export_checked(tmp_path: Path) -> Callable[[Graph], Path]:
    """Export a graph, then check it with onnx's checker and strict shape inference."""

    def export(g: Graph) -> Path:
        path = tmp_path / "model" / "model.onnx"
        to_onnx(g, path)
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(
            str(path), str(tmp_path / "inferred.onnx"), check_type=True, strict_mode=True
        )
        return path

    return export


@pytest.fixture
def run_ort(export_checked) -> Callable[..., list[torch.Tensor]]:
    """Export a graph and run it in ORT (reference mode unless told otherwise)."""

    def run(g: Graph, *inputs: torch.Tensor, reference: bool = True) -> list[torch.Tensor]:
        return OrtProgram(export_checked(g), reference=reference).run(*inputs)

    return run
