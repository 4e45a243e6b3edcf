"""`cgc check`: run the reference (eager PyTorch, or ONNX Runtime on an .onnx file), the IR
interpreter and backends on the same inputs and compare every output with the reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cgc import driver
from cgc.debug.numerics import Comparison, compare_all
from cgc.errors import CgcError, ModelError
from cgc.ir import interpret


@dataclass
class CheckReport:
    """Per target and output: errors against eager PyTorch."""

    model: str
    description: str
    reference: str
    rtol: float
    atol: float
    results: dict[str, list[Comparison]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for rows in self.results.values() for c in rows)

    def text(self) -> str:
        lines = [
            f"{self.model}: {self.description}",
            f"reference: {self.reference}; "
            f"tolerance |got - ref| <= {self.atol:g} + {self.rtol:g}·|ref|",
            f"{'target':<14} {'output':<12} {'max abs':>10} {'max rel':>10}  [at]         status",
        ]
        for target, rows in self.results.items():
            for c in rows:
                lines.append(f"{target:<14} {c.row():<48} {'ok' if c.ok else 'MISMATCH'}")
        lines.append("PASS" if self.ok else "FAIL: outputs out of tolerance")
        return "\n".join(lines)


def eager_outputs(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The module's tensor outputs, flattened in the order the tracer uses."""
    with torch.no_grad():
        out = module(*inputs)
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def check_model(
    spec: str,
    backends: list[str],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    pipeline: str = "default",
    batch: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """Compare the IR interpreter and each backend with the reference on MODEL.

    The reference is eager PyTorch, or ONNX Runtime running the original file for an .onnx MODEL.
    """
    for name in backends:
        driver.get_backend(name)  # unknown names fail before the long steps
    if driver.is_onnx(spec):
        name, graph, inputs, reference, ref = _onnx_reference(spec, input_shapes, seed, progress)
        weights = f"from {Path(spec).name}"
    else:
        name, graph, inputs, weights, ref = _eager_reference(spec, batch, seq_len, seed, progress)
        reference = "eager PyTorch"
    graph = driver.run_passes(graph, pipeline)
    shapes = ", ".join(f"{list(t.shape)}" for t in inputs)
    report = CheckReport(name, f"inputs {shapes}, weights {weights}", reference, rtol, atol)
    names = [v.name for v in graph.outputs]
    if len(names) != len(ref):
        raise CgcError(f"the graph has {len(names)} outputs, the reference gave {len(ref)}")
    progress("running the IR interpreter ...")
    got = interpret(graph, *inputs)
    report.results["interpreter"] = compare_all(names, got, ref, rtol=rtol, atol=atol)
    for backend in backends:
        progress(f"compiling and running {backend} ...")
        artifact = driver.compile_graph(graph, backend, {"model": name, "pipeline": pipeline})
        got = artifact.run(*inputs)
        report.results[backend] = compare_all(names, got, ref, rtol=rtol, atol=atol)
    return report


def _eager_reference(spec, batch, seq_len, seed, progress) -> tuple:
    loaded = driver.load_model(spec, batch=batch, seq_len=seq_len, seed=seed)
    if any(p.is_meta for p in loaded.module.parameters()):
        raise ModelError(
            f"{loaded.name} is built on the meta device (no weights); numerics checks need real "
            "weights: use a smaller model or a checkpoint folder"
        )
    progress("running eager PyTorch ...")
    ref = eager_outputs(loaded.module, loaded.example_inputs)
    progress("tracing ...")
    graph = driver.trace(loaded.module, loaded.example_inputs)
    return loaded.name, graph, loaded.example_inputs, loaded.weights, ref


def _onnx_reference(spec, input_shapes, seed, progress) -> tuple:
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{spec}: ONNX Runtime cannot run the original file: {first}") from None
    return Path(spec).stem, graph, inputs, "ONNX Runtime on the original file", ref
