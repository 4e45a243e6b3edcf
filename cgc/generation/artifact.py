"""The generation artifact (`cgc compile --generate`): both step graphs, runnable without the
model's source.

Files: for ONNX Runtime, `prefill.onnx` and `decode.onnx` sharing `weights.onnx.data` (each
weight stored once); for the wafer, the decode program as every wafer artifact holds it
(`program.json`, `program.txt`, `weights.safetensors`, `report.json` with the decode figures,
`wafer.png`: a prompt streams through that program, see cgc.backends.cerebras.steps); then
`graph.cgc` (the decode graph) and `prefill.cgc` as text, the tokenizer (`tokenizer.json` when
the model came with one), and `manifest.json` hashing every file, as every cgc artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cgc.artifact import Artifact, read_manifest
from cgc.errors import InputError
from cgc.generation.build import StepGraphs
from cgc.ir import parse
from cgc.tokenizer import Tokenizer, load_tokenizer

KIND = "generate"
PREFILL_IR = "prefill.cgc"


class GenerationArtifact(Artifact):
    """Prefill and decode graphs for ONNX Runtime, or the decode program of a wafer
    (`wafer`, from cgc.backends.cerebras.decode_plan), with the tokenizer."""

    def __init__(
        self,
        graphs: StepGraphs,
        tokenizer: Tokenizer,
        info: dict[str, Any] | None = None,
        wafer: Artifact | None = None,
    ) -> None:
        super().__init__(graphs.decode, {**(info or {}), "kind": KIND})
        self.graphs = graphs
        self.tokenizer = tokenizer
        self.wafer = wafer
        self.backend = "onnxruntime" if wafer is None else wafer.backend

    def write_files(self, folder: Path, progress: Callable[[str], None]) -> dict[str, str]:
        if self.wafer is not None:
            digests = self.wafer.write_files(folder, progress) or {}
        else:
            from cgc.backends.onnxruntime.export import to_onnx_models
            from cgc.backends.onnxruntime.steps import DECODE_FILE, PREFILL_FILE, WEIGHTS_FILE

            progress(f"writing {PREFILL_FILE}, {DECODE_FILE} and their shared weights")
            graphs = {PREFILL_FILE: self.graphs.prefill, DECODE_FILE: self.graphs.decode}
            digests = to_onnx_models(graphs, folder, WEIGHTS_FILE)
        (folder / PREFILL_IR).write_text(str(self.graphs.prefill))
        self.info["tokenizer"] = self.tokenizer.save(folder)
        self.info["capacity"] = self.graphs.capacity
        self.info["prompt_tokens"] = self.graphs.prompt_tokens
        self.info["batch"] = self.graphs.batch
        return digests

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        raise InputError("a generation artifact runs with `cgc generate ARTIFACT --prompt TEXT`")

    def summary(self) -> str:
        g = self.graphs
        text = (
            f"generation: batch {g.batch}, prefill {g.prompt_tokens} tokens, "
            f"cache capacity {g.capacity} tokens"
        )
        return text if self.wafer is None else f"{text}\n{self.wafer.summary()}"


def is_generation_artifact(folder: str | Path) -> bool:
    """Whether `folder` holds a `cgc compile --generate` artifact."""
    path = Path(folder)
    if not (path / "manifest.json").is_file():
        return False
    return read_manifest(path, check_files=False).get("info", {}).get("kind") == KIND


def load_generation(folder: str | Path) -> tuple[StepGraphs, Tokenizer, dict[str, Any]]:
    """The step graphs (weights in the backend's files), tokenizer and manifest of an
    artifact folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    info = manifest.get("info", {})
    if info.get("kind") != KIND:
        raise InputError(f"{folder}: not a generation artifact; compile one with --generate")
    graphs = StepGraphs(
        parse((folder / PREFILL_IR).read_text()), parse((folder / "graph.cgc").read_text())
    )
    return graphs, load_tokenizer(info["tokenizer"], base=folder), manifest
