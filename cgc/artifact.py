"""Compiled artifacts: what a backend produces, saves to a folder and loads back.

An artifact folder holds `manifest.json` (format version, backend, model, pipeline, input and
output types, and a SHA-256 of every other file so an edited or incomplete artifact is refused)
plus the backend's own files. Folders are written to a temporary sibling and renamed at the end,
so a failed save never leaves a half-written folder behind.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cgc.errors import InputError
from cgc.files import staged_folder
from cgc.ir import Graph, TensorType

MANIFEST = "manifest.json"
FORMAT = "cgc-artifact"
FORMAT_VERSION = 1


class Artifact(ABC):
    """A compiled model: runnable in process, savable to a folder."""

    backend: str

    def __init__(self, graph: Graph, info: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self.info = dict(info or {})  # model name, pipeline, weights origin: plain data

    @abstractmethod
    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Execute on `inputs` (one tensor per graph input) and return the outputs."""

    @abstractmethod
    def write_files(self, folder: Path, progress: Callable[[str], None]) -> dict[str, str] | None:
        """Write the backend's files into an empty `folder`; return the SHA-256 of any file it
        already hashed while writing (by file name), so the manifest need not read it back."""

    def summary(self) -> str:
        """What `cgc compile` prints about the compiled result beyond op counts ("" for none)."""
        return ""

    def run_report(self) -> str:
        """What `cgc run` prints after the outputs, e.g. simulated cycles ("" for none)."""
        return ""

    def save(self, folder: str | Path, progress: Callable[[str], None] = lambda _: None) -> Path:
        """Write the artifact to `folder` atomically (replacing an existing artifact there)."""
        folder = Path(folder)
        if folder.exists() and not (folder / MANIFEST).is_file():
            raise InputError(f"{folder} exists and is not a cgc artifact; choose another -o")
        with staged_folder(folder) as tmp:
            known = self.write_files(tmp, progress) or {}
            (tmp / "graph.cgc").write_text(str(self.graph))
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "backend": self.backend,
                "info": self.info,
                "inputs": [_describe(v.name, v.type) for v in self.graph.inputs],
                "outputs": [_describe(v.name, v.type) for v in self.graph.outputs],
                "files": {
                    p.name: known.get(p.name) or _sha256(p)
                    for p in sorted(tmp.iterdir())
                    if p.is_file()
                },
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return folder

    def input_types(self) -> list[tuple[str, TensorType]]:
        """Names and types of the inputs `run` expects."""
        return [(v.name, v.type) for v in self.graph.inputs]


def _describe(name: str, t: TensorType) -> dict[str, Any]:
    return {"name": name, "dtype": t.dtype, "shape": list(t.shape)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """The manifest of an artifact folder, after checking it is complete and unedited."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise InputError(f"{folder}: no such artifact folder (create one with `cgc compile`)")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not a cgc artifact (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable manifest ({e}); recompile the artifact") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a cgc artifact manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(
            f"{folder}: artifact format version {version} is newer than this cgc reads "
            f"({FORMAT_VERSION}); upgrade cgc or recompile"
        )
    if check_files:
        for name, digest in manifest.get("files", {}).items():
            file = folder / name
            if not file.is_file():
                raise InputError(f"{folder}: artifact is incomplete, {name} is missing; recompile")
            if _sha256(file) != digest:
                raise InputError(f"{folder}: {name} was modified after compilation; recompile")
    return manifest
