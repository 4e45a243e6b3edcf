"""Layer-pipelined training: what a region holds besides its kernels, and how long a step takes.

Every stage of the joint graph gets its own region (passes/layer_pipeline.py), so a weight
matrix has a forward region and two backward ones: the data gradient's, with its own 16-bit copy
of the weight, and the weight gradient's, whose fp32 accumulator completes the gradient. Besides
its kernels' operands and buffers, a region holds

- the *stash*: the forward activations its backward kernels read (layer inputs, attention's
  q, k, v, output and log-sum-exp, ...), received as the forward produces them and kept for
  the batch;
- for every parameter whose gradient it completes, the fp32 master weight and the optimizer
  state (kernels/optimizer.py), where the update then runs.

The model fits when every region holds all of that in its PEs' SRAM; Cerebras documents layer
pipelining for models under about 1B parameters.

A step. Attention's backward needs every query of a sequence before its keys' gradients are
complete, so the pipeline moves at sequence granularity: with B sequences, regions taking c_r
cycles for the batch (c_r / B a sequence) finish the step in (Σ c_r + (B - 1)·max c_r) / B
cycles, then the regions update their parameters in parallel (after the wafer-wide gradient
norm) before the next step's forward may read them.
"""

from __future__ import annotations

from cgc.backends.cerebras.planner import GRAD, Stage
from cgc.backends.cerebras.train_steps import value_bytes
from cgc.ir import Graph


def hold(graph: Graph, stages: list[Stage], free: dict[str, int], precision: str) -> None:
    """Set each backward stage's `stash_bytes` (forward values its kernels read) and
    `update_elements` (elements of the parameters whose gradients it completes)."""
    stage_of = {v.name: s.index for s in stages for n in s.nodes for v in n.outputs}
    for node in graph.nodes:
        if node.outputs[0].name in free:
            for v in node.outputs:
                stage_of[v.name] = free[node.outputs[0].name]
    outputs = {v.name for v in graph.outputs if v.name.startswith(GRAD)}
    for stage in stages:
        if stage.direction != "backward":
            continue
        read = {
            v.name: v
            for n in stage.nodes
            for v in n.inputs
            if v.name in stage_of and stages[stage_of[v.name]].direction == "forward"
        }
        stage.stash_bytes = sum(value_bytes(v, precision) for v in read.values())
        stage.update_elements = sum(
            v.type.numel for n in stage.nodes for v in n.outputs if v.name in outputs
        )


def step_cycles(
    region_cycles: list[int], update_cycles: list[int], sequences: int, norm: int
) -> dict[str, int]:
    """A pipelined training step: the batch through the regions at sequence granularity, then
    the gradient norm (`norm` cycles) and the slowest region's update."""
    slowest = max(region_cycles)
    flow = -(-(sum(region_cycles) + (sequences - 1) * slowest) // sequences)
    update = max(update_cycles, default=0) + norm
    return {"flow_cycles": flow, "update_cycles": update, "cycles": flow + update}
