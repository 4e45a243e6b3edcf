"""The ONNX Runtime artifact: `model.onnx` + `model.onnx.data`, run in an ORT CPU session."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cgc.artifact import Artifact
from cgc.backends.onnxruntime.export import to_onnx
from cgc.backends.onnxruntime.session import OrtProgram
from cgc.errors import InputError
from cgc.ir import Graph, parse

MODEL_FILE = "model.onnx"


class OrtArtifact(Artifact):
    """A graph lowered to ONNX; exported on first run or save, loaded lazily into ORT."""

    backend = "onnxruntime"

    def __init__(
        self,
        graph: Graph,
        info: dict[str, Any] | None = None,
        folder: Path | None = None,
        *,
        reference: bool = False,
    ) -> None:
        super().__init__(graph, info)
        self.folder = folder
        self.reference = reference
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._program: OrtProgram | None = None

    def write_files(self, folder: Path, progress: Callable[[str], None]) -> dict[str, str]:
        progress(f"writing {MODEL_FILE} and its weights")
        digests: dict[str, str] = {}
        to_onnx(self.graph, folder / MODEL_FILE, digests=digests)
        return digests

    @property
    def program(self) -> OrtProgram:
        """The ORT session, exporting the model to a scratch folder first if it is unsaved."""
        if self._program is None:
            if self.folder is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="cgc-ort-")
                self.folder = Path(self._scratch.name)
                to_onnx(self.graph, self.folder / MODEL_FILE)
            self._program = OrtProgram(self.folder / MODEL_FILE, reference=self.reference)
        return self._program

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the ONNX model in ONNX Runtime."""
        for (name, t), x in zip(self.input_types(), inputs, strict=False):
            if tuple(x.shape) != t.shape or x.dtype != t.torch_dtype:
                raise InputError(f"input {name} expects {t}, got {x.dtype} {list(x.shape)}")
        return self.program.run(*inputs)


def compile(graph: Graph, info: dict[str, Any], *, reference: bool = False) -> OrtArtifact:
    """Lower `graph` for ONNX Runtime (`reference=True` turns ORT's own optimizations off)."""
    return OrtArtifact(graph, info, reference=reference)


def load(folder: Path, manifest: dict[str, Any]) -> OrtArtifact:
    """An artifact folder written by `OrtArtifact.save`."""
    graph = parse((folder / "graph.cgc").read_text())
    return OrtArtifact(graph, manifest.get("info"), folder)
