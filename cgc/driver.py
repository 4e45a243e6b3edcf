"""The compile flow: resolve a model spec, trace it, run passes, hand the graph to a backend."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgc.artifact import Artifact, read_manifest
from cgc.backends import get_backend
from cgc.errors import CgcError, InputError, ModelError
from cgc.ir import Graph
from cgc.models.context import declared_context


@dataclass
class LoadedModel:
    """A model ready to trace, with where its weights came from."""

    name: str
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    weights: str  # a sentence for the user: "random (seed 0)", "checkpoint DIR", "from model.py"

    def num_parameters(self) -> int:
        """Parameter count of the module (tied weights once)."""
        return sum(p.numel() for p in self.module.parameters())


def load_model(
    spec: str, *, batch: int | None = None, seq_len: int | None = None, seed: int = 0
) -> LoadedModel:
    """Resolve MODEL: a built-in name, a Hugging Face checkpoint folder (or a training run
    folder: its latest checkpoint), or `model.py[:NAME]`."""
    from cgc import models

    if spec.endswith(".py") or ".py:" in spec:
        stem, _, entry = spec.rpartition(".py:") if ".py:" in spec else (spec[:-3], "", "")
        if batch is not None or seq_len is not None:
            raise InputError(
                "--batch and --seq-len apply to built-in models and checkpoints; "
                f"{stem}.py gives its own example inputs"
            )
        return _load_python(Path(stem + ".py"), entry or None)
    if Path(spec).is_dir():
        from cgc.training.checkpoint import is_run, latest_checkpoint

        folder = latest_checkpoint(spec) if is_run(spec) else Path(spec)
        module = models.load_hf_checkpoint(folder)
        if isinstance(module, models.GPT):
            inputs = models.example_inputs(module.config, batch or 1, seq_len, seed=seed)
        else:  # another family, through transformers: its config names context and vocabulary
            context = declared_context(module) or 128
            vocab = module.config.vocab_size
            inputs = models.token_ids(vocab, context, batch or 1, seq_len, seed=seed)
        return LoadedModel(Path(spec).resolve().name, module, inputs, f"checkpoint {folder}")
    if spec in models.available():
        config = models.get_config(spec)
        inputs = models.example_inputs(config, batch or 1, seq_len, seed=seed)
        module = models.build(spec, seed=seed)
        on_meta = next(module.parameters()).is_meta
        weights = "meta (not allocated)" if on_meta else f"random (seed {seed})"
        return LoadedModel(spec, module.eval(), inputs, weights)
    if "/" in spec or Path(spec).suffix:
        raise InputError(f"{spec}: no such file or folder")
    raise ModelError(f"unknown model {spec!r}; run `cgc models` for built-in names")


def _load_python(path: Path, entry: str | None) -> LoadedModel:
    """Import a user's model file and call its entry point."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    name = f"cgc_user_model_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs, as an import would: dataclasses and pickling look the module up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ModelError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except CgcError:
        raise
    except Exception as e:
        raise ModelError(f"{path}: importing it failed: {_where(e, path)}") from None
    if entry is None and hasattr(module, "get_model"):
        entry = "get_model"
    if entry is not None:
        fn = getattr(module, entry, None)
        if not callable(fn):
            raise ModelError(f"{path}: no function {entry}() to call")
        try:
            result = fn()
        except CgcError:
            raise
        except Exception as e:
            raise ModelError(f"{path}: {entry}() failed: {_where(e, path)}") from None
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ModelError(f"{path}: {entry}() must return (module, example_inputs)")
        model, inputs = result
    elif hasattr(module, "model") and hasattr(module, "example_inputs"):
        model, inputs = module.model, module.example_inputs
    else:
        raise ModelError(
            f"{path}: define get_model() returning (module, example_inputs), "
            "or module-level `model` and `example_inputs`"
        )
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{path}: the model is a {type(model).__name__}, not a torch.nn.Module")
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ModelError(f"{path}: example_inputs must be a tensor or a tuple of tensors")
    return LoadedModel(path.stem, model.eval(), inputs, f"from {path.name}")


def _where(error: Exception, path: Path) -> str:
    """The error with the innermost line of the user's file it came from."""
    file = str(path.resolve())
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == file]
    at = f" (line {frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{at}"


def trace(module: torch.nn.Module, example_inputs: tuple[Any, ...]) -> Graph:
    """Trace a PyTorch module into the cgc IR (torch.export, then import of core ATen)."""
    from cgc.frontends import trace as fx_trace

    return fx_trace(module, tuple(example_inputs))


def load_onnx(path: str | Path, input_shapes: dict[str, list[int]] | None = None) -> Graph:
    """Read an ONNX file into the cgc IR; `input_shapes` fixes dynamic input dimensions."""
    from cgc.frontends import load_onnx as read

    return read(path, input_shapes=input_shapes)


def is_onnx(spec: str) -> bool:
    """Whether a MODEL argument names an ONNX file."""
    return spec.endswith(".onnx")


def example_inputs_for(graph: Graph, seed: int = 0) -> list[torch.Tensor]:
    """Seeded inputs for a graph: integer ids stay inside every embedding table they index."""
    from cgc.io import random_inputs

    inputs = []
    for i, v in enumerate(graph.inputs):
        rows = [u.inputs[0].shape[0] for u in v.users if u.op == "embedding" and u.inputs[1] is v]
        inputs += random_inputs([(v.name, v.type)], seed + i, high=min(rows, default=2))
    return inputs


def run_passes(graph: Graph, pipeline: str) -> Graph:
    """Run a pipeline string such as "canonicalize,fuse-attention" (or "default") on `graph`."""
    from cgc.passes import run_passes as run

    return run(graph, pipeline)


def compile(
    module: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    backend: str = "onnxruntime",
    *,
    pipeline: str = "default",
    **options: Any,
) -> Artifact:
    """Trace, optimise and compile `module` for `backend`; returns a runnable Artifact."""
    graph = run_passes(trace(module, example_inputs), pipeline)
    return compile_graph(graph, backend, {"pipeline": pipeline}, **options)


def compile_graph(
    graph: Graph, backend: str, info: dict[str, Any] | None = None, **options: Any
) -> Artifact:
    """Hand an already optimised graph to `backend`."""
    return get_backend(backend).compile(graph, dict(info or {}), **options)


def load(folder: str | Path) -> Artifact:
    """Load an artifact folder written by `Artifact.save` or `cgc compile`."""
    manifest = read_manifest(folder)
    if manifest.get("info", {}).get("kind") == "generate":
        raise InputError(f"{folder} is a generation artifact; run it with `cgc generate {folder}`")
    return get_backend(manifest["backend"]).load(Path(folder), manifest)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Call `fn` and return its result with the wall time in seconds."""
    import time

    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
