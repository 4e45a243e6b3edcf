"""OrtProgram: optimization level, threads, inputs in torch or numpy, input errors."""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cgc.backends.onnxruntime import OrtProgram, to_onnx
from cgc.errors import InputError
from cgc.ir import parse

GRAPH = """\
graph @t(%x: f32[2,3], %z: f32[3]) {
  %y = mul(%x, %z) : f32[2,3]
  %w = relu(%y) : f32[2,3]
  return %y, %w
}
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    to_onnx(parse(GRAPH), path)
    return path


def test_reference_mode_disables_ort_optimizations(model: Path) -> None:
    level = ort.GraphOptimizationLevel
    options = OrtProgram(model, reference=True).session.get_session_options()
    assert options.graph_optimization_level == level.ORT_DISABLE_ALL
    options = OrtProgram(model).session.get_session_options()
    assert options.graph_optimization_level == level.ORT_ENABLE_ALL


def test_threads_default_to_the_core_count(model: Path) -> None:
    assert OrtProgram(model).session.get_session_options().intra_op_num_threads == os.cpu_count()
    assert OrtProgram(model, threads=1).session.get_session_options().intra_op_num_threads == 1


def test_runs_torch_and_numpy_inputs(model: Path) -> None:
    program = OrtProgram(model)
    x = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    y, w = program.run(x, np.array([2.0, 2.0, -1.0], dtype=np.float32))
    assert torch.equal(y, torch.tensor([[2.0, -4.0, -3.0], [-8.0, 10.0, 6.0]]))
    assert torch.equal(w, torch.tensor([[2.0, 0.0, 0.0], [0.0, 10.0, 6.0]]))
    assert program.input_names == ["x", "z"] and program.output_names == ["y", "w"]


def test_wrong_input_count_is_an_input_error(model: Path) -> None:
    with pytest.raises(InputError, match=r"^model.onnx takes 2 inputs, got 1$"):
        OrtProgram(model).run(torch.zeros(2, 3))


def test_wrong_input_shape_is_an_input_error(model: Path) -> None:
    with pytest.raises(InputError, match=r"Got invalid dimensions for input: z"):
        OrtProgram(model).run(torch.zeros(2, 3), torch.zeros(4))


def test_missing_model_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"no ONNX model at .*nothing.onnx; export one with to_onnx"
    ):
        OrtProgram(tmp_path / "nothing.onnx")
