"""Planning a graph for a wafer: the partitioning pass of the mode that fits.

The modes' passes (cgc.passes.layer_pipeline, cgc.passes.weight_streaming) build on the
planner's stages and costs; this module runs them, so the planner does not import its passes.
"""

from __future__ import annotations

from cgc.backends.cerebras.machine import get_machine
from cgc.backends.cerebras.planner import Plan, PlanError, read_plan
from cgc.backends.cerebras.precision import check_precision
from cgc.errors import InputError
from cgc.ir import Graph
from cgc.passes.base import PassContext

MODES = ("auto", "pipelined", "streaming")


def plan(graph: Graph, target: str = "wse2", precision: str = "fp32", mode: str = "auto") -> Plan:
    """Partition `graph` for `target` (annotating it) and return the plan.

    `auto` plans layer-pipelined when every stage fits on the wafer at once, and weight
    streaming otherwise; a model that fits in neither mode is a PlanError saying why.
    """
    # Imported here, not above: the passes import this package's planner, and this module is
    # imported by the package's __init__, so a top-level import would run before they exist.
    from cgc.passes.layer_pipeline import LayerPipeline
    from cgc.passes.weight_streaming import WeightStreaming

    machine = get_machine(target)
    check_precision(precision)
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    passes = {"pipelined": LayerPipeline, "streaming": WeightStreaming}
    tried = ["pipelined", "streaming"] if mode == "auto" else [mode]
    errors = []
    for name in tried:
        p = passes[name](target=target, precision=precision)
        try:
            p.run(graph, PassContext())
        except PlanError as e:
            errors.append(str(e))
            continue
        return read_plan(graph, machine, precision, name)
    if len(errors) == 1:
        raise PlanError(errors[0])
    raise PlanError(f"the model fits {machine.name} in neither mode: {errors[0]}; {errors[1]}")
