"""`cgc check`: run the reference (eager PyTorch, or ONNX Runtime on an .onnx file), the IR
interpreter and backends on the same inputs and compare every output with the reference.

When a target is out of tolerance, a per-node comparison says where it starts: for the
interpreter, the traced graph against the optimised one (a pass at fault) and, for a backend,
the interpreter against the backend with every value marked as an output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cgc import driver
from cgc.debug.node_compare import compare_graphs
from cgc.debug.numerics import compare_all
from cgc.debug.report import CheckReport, Tolerance
from cgc.errors import CgcError, InputError, ModelError, first_line
from cgc.ir import Graph, interpret

INTERPRETER = "interpreter"

__all__ = ["INTERPRETER", "CheckReport", "Reference", "Tolerance", "check_model", "check_reference"]


@dataclass
class Reference:
    """A model ready to check: its traced graph, inputs, and the reference outputs."""

    name: str
    graph: Graph
    inputs: tuple[torch.Tensor, ...]
    weights: str  # where the weights came from, for the report
    description: str  # what the reference outputs come from
    outputs: list[torch.Tensor]


def run_eager(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> object:
    """What the module returns for `inputs`; an exception from the user's model is a one-line
    ModelError, not a cgc failure."""
    try:
        return module(*inputs)
    except CgcError:
        raise
    except Exception as e:
        raise ModelError(
            f"the model fails in eager PyTorch: {type(e).__name__}: {first_line(e)}"
        ) from None


def eager_outputs(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The module's tensor outputs, flattened in the order the tracer uses."""
    with torch.no_grad():
        out = run_eager(module, inputs)
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def load_reference(
    spec: str,
    *,
    batch: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Reference:
    """Trace or import MODEL and compute its reference outputs (eager PyTorch, or ONNX Runtime
    on the original file for an .onnx MODEL)."""
    if driver.is_onnx(spec):
        return _onnx_reference(spec, input_shapes, seed, progress)
    loaded = driver.load_model(spec, batch=batch, seq_len=seq_len, seed=seed)
    module, inputs = loaded.module, loaded.example_inputs
    return module_reference(module, inputs, loaded.name, loaded.weights, progress)


def module_reference(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    name: str,
    weights: str,
    progress: Callable[[str], None] = lambda _: None,
) -> Reference:
    """Eager outputs and the traced graph of a module."""
    inputs = tuple(example_inputs)
    if any(p.is_meta for p in module.parameters()):
        raise ModelError(
            f"{name} is built on the meta device (no weights); numerics checks need real "
            "weights: use a smaller model or a checkpoint folder"
        )
    progress("running eager PyTorch ...")
    ref = eager_outputs(module, inputs)
    progress("tracing ...")
    graph = driver.trace(module, inputs)
    return Reference(name, graph, inputs, weights, "eager PyTorch", ref)


def check_model(
    spec: str,
    backends: list[str],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
    pipeline: str = "default",
    batch: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    wafer: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """Compare the IR interpreter and each backend with the reference on MODEL.

    `tolerances` and `rtol`/`atol` are as for check_reference. `wafer` holds the cerebras
    backend's options (target, precision) when it is checked.
    """
    for name in backends:
        driver.get_backend(name)  # unknown names fail before the long steps
    ref = load_reference(
        spec, batch=batch, seq_len=seq_len, seed=seed, input_shapes=input_shapes, progress=progress
    )
    return check_reference(
        ref,
        backends,
        rtol=rtol,
        atol=atol,
        tolerances=tolerances,
        pipeline=pipeline,
        wafer=wafer,
        progress=progress,
    )


def check_reference(
    ref: Reference,
    backends: list[str],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
    pipeline: str = "default",
    wafer: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """Run the pipeline on the reference's graph, then the interpreter and each backend.

    `tolerances` maps a target (INTERPRETER or a backend) to its (rtol, atol), since targets
    computing in another precision (a 16-bit wafer) need their own; the others use rtol, atol.
    """
    targets = [INTERPRETER, *backends]
    given = tolerances or {}
    if unknown := sorted(set(given) - set(targets)):
        raise InputError(f"tolerances given for {', '.join(unknown)}, which are not checked")
    tols = {t: Tolerance(*given.get(t, (rtol, atol))) for t in targets}
    traced = ref.graph.copy()
    graph = driver.run_passes(ref.graph, pipeline)
    shapes = ", ".join(f"{list(t.shape)}" for t in ref.inputs)
    report = CheckReport(
        ref.name,
        f"inputs {shapes}, weights {ref.weights}",
        ref.description,
        tols,
        pipeline=pipeline,
    )
    names = [v.name for v in graph.outputs]
    if len(names) != len(ref.outputs):
        raise CgcError(f"the graph has {len(names)} outputs, the reference gave {len(ref.outputs)}")
    for target, tol in tols.items():
        if target == INTERPRETER:
            progress("running the IR interpreter ...")
        else:
            progress(f"compiling and running {target} ...")
        start = time.perf_counter()
        if target == INTERPRETER:
            got = interpret(graph, *ref.inputs)
        else:
            info = {"model": ref.name, "pipeline": pipeline}
            options = (wafer or {}) if target == "cerebras" else {}
            got = driver.compile_graph(graph, target, info, **options).run(*ref.inputs)
        report.seconds[target] = time.perf_counter() - start
        report.results[target] = compare_all(names, got, ref.outputs, rtol=tol.rtol, atol=tol.atol)
        if not all(c.ok for c in report.results[target]):
            progress(f"per-node comparison for {target} ...")
            if target == INTERPRETER:
                nodes = compare_graphs(traced, graph, ref.inputs, rtol=tol.rtol, atol=tol.atol)
            else:
                nodes = compare_graphs(
                    graph, graph, ref.inputs, rtol=tol.rtol, atol=tol.atol, candidate_backend=target
                )
            report.nodes[target] = nodes
    return report


def _onnx_reference(spec, input_shapes, seed, progress) -> Reference:
    from cgc.backends.onnxruntime import OrtProgram

    progress(f"importing {spec} ...")
    graph = driver.load_onnx(spec, input_shapes)
    inputs = driver.example_inputs_for(graph, seed)
    progress("running the original file in ONNX Runtime ...")
    try:
        ref = OrtProgram(spec).run(*inputs)
    except CgcError:
        raise
    except Exception as e:  # ORT refuses some files cgc can read; say so in one line
        message = first_line(e)
        raise ModelError(f"{spec}: ONNX Runtime cannot run the original file: {message}") from None
    weights = f"from {Path(spec).name}"
    return Reference(
        Path(spec).stem, graph, tuple(inputs), weights, "ONNX Runtime on the original file", ref
    )
