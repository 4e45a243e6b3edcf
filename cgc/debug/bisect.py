"""Bisect a miscompile to the first pass, then to the first rewrite, that breaks the outputs.

Like LLVM's -opt-bisect-limit: the pattern rewriter asks `PassContext.allow_rewrite()` before
every rewrite, counting them across the pipeline; with `rewrite_limit = N` only the first N
happen. The outputs are checked after each pass (interpreter, or a backend); within the first
pass that leaves tolerance, a binary search over N finds the first rewrite that does. Passes
before it stay below the limit, so they run exactly as in the full pipeline. The per-node
report then compares the graph before that rewrite with the graph after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cgc.debug.node_compare import NodeReport, compare_graphs
from cgc.debug.numerics import Comparison, compare_all
from cgc.errors import InputError
from cgc.ir import Graph, interpret
from cgc.passes.base import PassContext, PassResult
from cgc.passes.manager import PassManager
from cgc.passes.pipeline import parse_pipeline


@dataclass
class BisectResult:
    """Where the outputs left tolerance; `first_pass` None means they never did (or the input
    graph already had, see `baseline`)."""

    passes: list[str]  # the pipeline's passes, as written
    baseline: list[Comparison]  # the input graph's outputs against the reference
    checked: list[list[Comparison]] = field(default_factory=list)  # after each pass, until bad
    rewrites: list[tuple[int, int]] = field(default_factory=list)  # counter before/after pass
    first_pass: int | None = None  # index into `passes`
    rewrite: int | None = None  # global 1-based index of the first bad rewrite
    rule: str = ""  # the pattern that rewrite applied (from the pass's statistics)
    outputs: list[Comparison] = field(default_factory=list)  # just after that rewrite
    nodes: NodeReport | None = None  # before vs after that rewrite
    evaluations: int = 0  # pipeline runs the search took
    header: str = ""  # the model, the reference and the tolerance, when known

    @property
    def ok(self) -> bool:
        """The outputs stayed within tolerance from the input graph to the end."""
        return all(c.ok for c in self.baseline) and self.first_pass is None

    def text(self) -> str:
        """What a person reads: the pass, the rewrite, the outputs, and the per-node report."""
        total = self.rewrites[-1][1] if self.rewrites else 0
        lines = [self.header] if self.header else []
        lines.append(f"pipeline: {','.join(self.passes)} ({len(self.passes)} passes)")
        if not all(c.ok for c in self.baseline):
            lines.append("the input graph is already out of tolerance (before any pass):")
            lines += [f"  {c.row()}" for c in self.baseline]
            return "\n".join(lines)
        lines.append(f"input graph: within tolerance ({_worst(self.baseline)})")
        if self.first_pass is None:
            lines.append(f"outputs stay within tolerance after every pass ({total} rewrites)")
            return "\n".join(lines)
        i = self.first_pass
        before, after = self.rewrites[i]
        if i:
            lines.append(f"within tolerance after pass {i}: {self.passes[i - 1]}")
        counted = f"rewrites #{before + 1}..#{after}" if after > before else "no rewrites counted"
        lines.append(
            f"first bad pass: {self.passes[i]} (pass {i + 1} of {len(self.passes)}; {counted})"
        )
        if self.rewrite is None:
            lines.append(
                "  the pass counted no rewrite through PassContext.allow_rewrite(), so it cannot "
                "be bisected further"
            )
            lines += [f"  {c.row()}" for c in self.checked[i]]
        else:
            nth = self.rewrite - before
            rule = f" ({self.rule})" if self.rule else ""
            lines.append(
                f"first bad rewrite: #{self.rewrite}{rule}, rewrite {nth} of {after - before} "
                f"in {self.passes[i]}; reproduce with rewrite_limit={self.rewrite}"
            )
            lines.append("outputs after it:")
            lines += [f"  {c.row()}  {'ok' if c.ok else 'MISMATCH'}" for c in self.outputs]
        if self.nodes is not None:
            lines.append(self.nodes.text())
        return "\n".join(lines)


def _worst(rows: Sequence[Comparison]) -> str:
    return "max abs " + ", ".join(f"{c.name} {c.max_abs:.2e}" for c in rows)


Run = Callable[[Graph], list[torch.Tensor]]


def _runner(inputs: Sequence[torch.Tensor], backend: str | None) -> Run:
    if backend is None:
        return lambda g: interpret(g, *inputs)
    from cgc.driver import compile_graph

    return lambda g: compile_graph(g, backend, {"purpose": "bisect"}).run(*inputs)


def _prefix(graph: Graph, pipeline: str, upto: int, limit: int | None) -> tuple[Graph, PassResult]:
    """A copy of `graph` after the first `upto` + 1 passes under a rewrite limit; the last
    pass's result."""
    g = graph.copy()
    pm = PassManager(parse_pipeline(pipeline)[: upto + 1], PassContext(rewrite_limit=limit))
    pm.run(g)
    return g, pm.results[-1][1]


def bisect_pipeline(
    graph: Graph,
    inputs: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    pipeline: str,
    *,
    rtol: float,
    atol: float,
    backend: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BisectResult:
    """Find the first pass of `pipeline`, then its first rewrite, after which the outputs of
    `graph` (not modified) on `inputs` leave tolerance against `reference`.

    Outputs come from the interpreter, or from compiling with `backend` and running that.
    """
    run = _runner(inputs, backend)
    names = [v.name for v in graph.outputs]

    def check(g: Graph) -> list[Comparison]:
        return compare_all(names, run(g), reference, rtol=rtol, atol=atol)

    passes = parse_pipeline(pipeline)
    result = BisectResult([repr(p) for p in passes], check(graph))
    if not result.ok:
        return result
    g = graph.copy()
    ctx = PassContext()
    for i, p in enumerate(passes):
        progress(f"pass {i + 1}/{len(passes)}: {p!r}")
        before = ctx.rewrites
        PassManager([p], ctx).run(g)
        result.rewrites.append((before, ctx.rewrites))
        result.checked.append(check(g))
        if not all(c.ok for c in result.checked[-1]):
            result.first_pass = i
            break
    result.evaluations = len(passes) if result.first_pass is None else result.first_pass + 1
    if result.first_pass is None:
        return result
    i = result.first_pass
    good, bad = result.rewrites[i]
    if good == bad:  # the pass rewrote without counting: compare before and after it
        prior = graph.copy()
        PassManager(passes[:i], PassContext()).run(prior)
        progress("per-node comparison ...")
        result.nodes = compare_graphs(
            prior,
            g,
            inputs,
            rtol=rtol,
            atol=atol,
            reference_backend=backend,
            candidate_backend=backend,
        )
        return result
    outputs = result.checked[i]
    while bad - good > 1:  # invariant: limit `good` is within tolerance, limit `bad` is not
        mid = (good + bad) // 2
        progress(f"rewrite limit {mid} (bad rewrite in #{good + 1}..#{bad})")
        rows = check(_prefix(graph, pipeline, i, mid)[0])
        result.evaluations += 1
        if all(c.ok for c in rows):
            good = mid
        else:
            bad, outputs = mid, rows
    result.rewrite, result.outputs = bad, outputs
    before, before_stats = _prefix(graph, pipeline, i, bad - 1)
    after, after_stats = _prefix(graph, pipeline, i, bad)
    grew = [k for k, n in after_stats.stats.items() if n > before_stats.stats.get(k, 0)]
    result.rule = ", ".join(grew)
    progress("per-node comparison ...")
    result.nodes = compare_graphs(
        before,
        after,
        inputs,
        rtol=rtol,
        atol=atol,
        reference_backend=backend,
        candidate_backend=backend,
    )
    return result


def bisect_model(
    spec: str,
    pipeline: str = "default",
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    backend: str | None = None,
    reference: str | None = None,
    weights: str | Path | None = None,
    inputs_file: str | Path | None = None,
    batch: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BisectResult:
    """Bisect `pipeline` on MODEL (what `cgc bisect` runs).

    `reference` "eager" compares with eager PyTorch (ONNX Runtime on the original file for an
    .onnx MODEL), "ir" with the interpreter on the graph before the pipeline; a .cgc MODEL (with
    `weights`) has only the latter, which is also its default. A .cgc MODEL runs on seeded
    random inputs, or on `inputs_file` (a .safetensors file keyed by input name) when random ones
    make no sense, as for a training step (its optimizer state must not be negative).
    """
    from cgc import driver
    from cgc.check import load_reference
    from cgc.debug.irfile import read_ir
    from cgc.io import load_inputs

    if reference not in (None, "eager", "ir"):
        raise InputError(f"unknown reference {reference!r}; choose eager or ir")
    parse_pipeline(pipeline)  # bad names fail before the long steps
    if backend is not None:
        driver.get_backend(backend)
    if spec.endswith(".cgc"):
        if reference == "eager":
            raise InputError(f"{spec} is IR, with no eager model to compare; use --reference ir")
        graph = read_ir(spec, weights)
        types = [(v.name, v.type) for v in graph.inputs]
        inputs: Sequence[torch.Tensor] = (
            load_inputs(Path(inputs_file), types)
            if inputs_file
            else driver.example_inputs_for(graph, seed)
        )
        name = Path(spec).stem
    else:
        if weights is not None or inputs_file is not None:
            raise InputError("--weights and --inputs apply to .cgc files; MODEL brings its own")
        ref = load_reference(
            spec,
            batch=batch,
            seq_len=seq_len,
            seed=seed,
            input_shapes=input_shapes,
            progress=progress,
        )
        graph, inputs, name = ref.graph, ref.inputs, ref.name
    if reference == "eager" or (reference is None and not spec.endswith(".cgc")):
        outputs, described = ref.outputs, ref.description
    else:
        progress("running the interpreter on the input graph ...")
        outputs, described = interpret(graph, *inputs), "the interpreter on the input graph"
    result = bisect_pipeline(
        graph, inputs, outputs, pipeline, rtol=rtol, atol=atol, backend=backend, progress=progress
    )
    shapes = ", ".join(f"{list(t.shape)}" for t in inputs)
    checked = backend or "the interpreter"
    result.header = (
        f"{name}: inputs {shapes}; outputs of {checked} against {described}; "
        f"tolerance |got - ref| <= {atol:g} + {rtol:g}·|ref|"
    )
    return result
