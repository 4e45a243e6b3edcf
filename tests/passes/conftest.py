"""Fixtures for pass tests: graphs from the registry's decompositions, IR in → IR out, numerics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from cgc.driver import compile_graph, trace
from cgc.ir import Graph, TensorType, get_op, interpret, parse, verify
from cgc.passes import DEFAULT_PIPELINE, Pass, PassContext, PassManager, PassResult


def _t(spec: str) -> TensorType:
    """A type from its text, `f32[2,8,32]`."""
    dtype, dims = spec.rstrip("]").split("[")
    return TensorType(tuple(int(d) for d in dims.split(",") if d), dtype)


def _decomposed(
    op: str,
    inputs: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    name: str = "g",
    **attrs: Any,
) -> Graph:
    """A graph computing `op` through its registry decomposition: what the frontend emits."""
    g = Graph(name)
    values = [g.add_input(n, _t(s)) for n, s in inputs.items()]
    values += [g.add_param(n, _t(s)) for n, s in (params or {}).items()]
    opdef = get_op(op)
    g.outputs = opdef.decompose(g, values, opdef.complete_attrs(attrs))
    return g


def _random_inputs(g: Graph, seed: int = 0) -> list[torch.Tensor]:
    """Seeded random data for every graph input (and every parameter lacking data)."""
    gen = torch.Generator().manual_seed(seed)

    def sample(type: TensorType) -> torch.Tensor:
        if type.is_float:
            return torch.randn(type.shape, generator=gen, dtype=type.torch_dtype)
        if type.dtype == "bool":
            return torch.randint(0, 2, type.shape, generator=gen).bool()
        return torch.randint(0, 7, type.shape, generator=gen, dtype=type.torch_dtype)

    for name, v in g.params.items():
        if name not in g.weights:
            g.weights[name] = sample(v.type)
    return [sample(v.type) for v in g.inputs]


def _run(graph: Graph | str, pipeline: str) -> Graph:
    """Run a pipeline on a graph (or IR text) with verification after every pass."""
    g = parse(graph) if isinstance(graph, str) else graph
    verify(g)
    return PassManager(pipeline, PassContext(verify_each=True)).run(g)


def _rewrite_text(text: str, pipeline: str) -> str:
    """IR text in, IR text out."""
    return str(_run(text, pipeline))


def _assert_same_numerics(g: Graph, pipeline: str, atol: float = 1e-5, seed: int = 0) -> Graph:
    """Run `pipeline` on `g` and check the interpreter gives the same outputs before and after."""
    inputs = _random_inputs(g, seed)
    before = interpret(g, *inputs)
    after = interpret(_run(g, pipeline), *inputs)
    for want, got in zip(before, after, strict=True):
        torch.testing.assert_close(got, want, atol=atol, rtol=atol)
    return g


@pytest.fixture
def decomposed():
    """decomposed(op, inputs, params, **attrs): `op` through its registry decomposition."""
    return _decomposed


@pytest.fixture
def rewrite_text():
    """rewrite_text(text, pipeline) -> the IR text after the pipeline."""
    return _rewrite_text


@pytest.fixture
def run_pipeline():
    """run_pipeline(graph_or_text, pipeline) -> the graph, verified after every pass."""
    return _run


@pytest.fixture
def same_numerics():
    """same_numerics(graph, pipeline, atol=1e-5): run it, checking outputs before == after."""
    return _assert_same_numerics


def _default_pipeline_checked(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], tol: float = 1e-4
) -> tuple[Graph, list[str]]:
    """Trace a single-output `module` and run the default pipeline one pass at a time, checking
    the interpreter against eager PyTorch after tracing and after every pass, then ONNX Runtime.

    Returns the final graph and the stages checked: "trace", each pass, "onnxruntime".
    """
    with torch.no_grad():
        want = module(*inputs)
    checked: list[str] = []

    def check(stage: str, got: torch.Tensor) -> None:
        torch.testing.assert_close(
            got, want, atol=tol, rtol=tol, msg=lambda m: f"after {stage}: {m}"
        )
        checked.append(stage)

    def after_pass(p: Pass, g: Graph, result: PassResult, ctx: PassContext) -> None:
        check(repr(p), *interpret(g, *inputs))

    g = trace(module, inputs)
    check("trace", *interpret(g, *inputs))
    manager = PassManager(DEFAULT_PIPELINE, PassContext(verify_each=True))
    manager.after_pass.append(after_pass)
    manager.run(g)
    check("onnxruntime", *compile_graph(g, "onnxruntime").run(*inputs))
    return g, checked


@pytest.fixture
def default_pipeline_checked():
    """default_pipeline_checked(module, inputs) -> (graph, stages): numerics vs eager after
    tracing, after every pass of the default pipeline, and in ONNX Runtime (within 1e-4)."""
    return _default_pipeline_checked
