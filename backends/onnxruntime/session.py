"""Runs an exported ONNX model in ONNX Runtime on CPU, torch tensors in and out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from cgc.errors import InputError


class OrtProgram:
    """An ONNX model loaded in an ORT CPU session.

    `reference=True` turns ORT's graph optimizations off, so what runs (and what is compared
    with the interpreter) is exactly what cgc emitted; the default applies all of them.
    """

    def __init__(
        self, model: str | Path, *, reference: bool = False, threads: int | None = None
    ) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            raise InputError(f"no ONNX model at {self.path}; export one with to_onnx first")
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if reference
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.reference = reference
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, *inputs: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """The model's outputs for `inputs`, given in graph-input order."""
        if len(inputs) != len(self.input_names):
            expected = len(self.input_names)
            raise InputError(f"{self.path.name} takes {expected} inputs, got {len(inputs)}")
        feeds = {
            name: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
            for name, x in zip(self.input_names, inputs, strict=True)
        }
        try:
            outputs = self.session.run(self.output_names, feeds)
        except InvalidArgument as e:  # wrong shape or dtype: the user's input, said in one line
            raise InputError(str(e).strip()) from None
        return [torch.from_numpy(y) for y in outputs]

    def __repr__(self) -> str:
        mode = "reference" if self.reference else "optimized"
        return f"OrtProgram({self.path}, {mode})"
