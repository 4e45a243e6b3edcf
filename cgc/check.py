"""`cgc check`: run eager PyTorch, the IR interpreter and backends on the same inputs and
compare every output with eager."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    rtol: float
    atol: float
    results: dict[str, list[Comparison]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for rows in self.results.values() for c in rows)

    def text(self) -> str:
        lines = [
            f"{self.model}: {self.description}",
            "reference: eager PyTorch; "
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
    progress: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """Compare the IR interpreter and each backend with eager PyTorch on MODEL."""
    for name in backends:
        driver.get_backend(name)  # unknown names fail before the long steps
    loaded = driver.load_model(spec, batch=batch, seq_len=seq_len, seed=seed)
    if any(p.is_meta for p in loaded.module.parameters()):
        raise ModelError(
            f"{loaded.name} is built on the meta device (no weights); numerics checks need real "
            "weights: use a smaller model or a checkpoint folder"
        )
    shapes = ", ".join(f"{list(t.shape)}" for t in loaded.example_inputs)
    report = CheckReport(loaded.name, f"inputs {shapes}, weights {loaded.weights}", rtol, atol)
    progress("running eager PyTorch ...")
    ref = eager_outputs(loaded.module, loaded.example_inputs)
    progress("tracing ...")
    graph = driver.run_passes(driver.trace(loaded.module, loaded.example_inputs), pipeline)
    names = [v.name for v in graph.outputs]
    if len(names) != len(ref):
        raise CgcError(f"traced graph has {len(names)} outputs, eager gave {len(ref)}")
    progress("running the IR interpreter ...")
    got = interpret(graph, *loaded.example_inputs)
    report.results["interpreter"] = compare_all(names, got, ref, rtol=rtol, atol=atol)
    for name in backends:
        progress(f"compiling and running {name} ...")
        artifact = driver.compile_graph(graph, name, {"model": loaded.name, "pipeline": pipeline})
        got = artifact.run(*loaded.example_inputs)
        report.results[name] = compare_all(names, got, ref, rtol=rtol, atol=atol)
    return report
