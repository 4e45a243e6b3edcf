"""weight-streaming: run one layer at a time on the whole wafer, weights streamed from off-wafer.

For models whose weights do not fit in SRAM together. The stages (see
cgc.backends.cerebras.planner) are grouped into *steps*: one per transformer block, plus one for
the stages before the first block and one for those after the last. A step's stages run one
after another, each on the whole usable rectangle, while the next step's weights stream in at
the machine's off-wafer bandwidth; activations stay in SRAM, spread over the wafer. A step
takes max(its stages' cycles, its weight bytes at the stream bandwidth) plus a wafer-wide
broadcast (planner.streaming_cycles).

A PE must hold, during a step, the largest stage's working set on the whole wafer (its weight
block and buffers, as the kernel's SRAM model states) plus its share of the activations live
across the step boundary. When that exceeds the usable SRAM the pass fails naming the kernel.

A joint (training) graph has a forward and a backward step per layer; what streams in and
out of each, what stays in SRAM and which layers are recomputed is cgc.backends.cerebras.
train_steps.

Annotates every kernel node with `stage`, `step` and `region` ([[rows, cols, pes]] of the whole
usable rectangle), and free nodes with `stage` and `step`; in a joint graph, kernels also with
`held` (the activation bytes live across their step, [bytes, 0, optimizer] as layer-pipeline
writes it) and the kernels of a recomputed layer's forward step with `recompute`.
"""

from __future__ import annotations

from cgc.backends.cerebras.machine import Machine
from cgc.backends.cerebras.planner import (
    PlanError,
    RegionCost,
    Stage,
    joint_loss,
    param_bytes,
    streaming_cycles,
    streaming_steps,
)
from cgc.backends.cerebras.precision import BYTES
from cgc.backends.cerebras.train_steps import choose_recompute
from cgc.ir import Graph
from cgc.passes.layer_pipeline import WaferPass, clear
from cgc.passes.manager import PassContext, PassResult
from cgc.passes.registry import register_pass


def live_bytes(
    graph: Graph, steps: list[list[Stage]], free: dict[str, int], precision: str
) -> list[int]:
    """Bytes of activations each step boundary keeps in SRAM (produced before, used after)."""
    step_of = {id(n): i for i, step in enumerate(steps) for s in step for n in s.nodes}
    stage_step = {s.index: i for i, step in enumerate(steps) for s in step}
    for node in graph.nodes:
        if node.outputs[0].name in free:
            step_of[id(node)] = stage_step[free[node.outputs[0].name]]
    last_use: dict[str, int] = {}
    for node in graph.nodes:
        i = step_of.get(id(node))
        if i is None:
            continue
        for v in node.inputs:
            last_use[v.name] = max(last_use.get(v.name, i), i)
    out = [0] * len(steps)
    for node in graph.nodes:
        i = step_of.get(id(node))
        if i is None:
            continue
        for v in node.outputs:
            size = v.type.numel * (BYTES[precision] if v.type.is_float else 4)
            for boundary in range(i + 1, last_use.get(v.name, i) + 1):
                out[boundary] += size
    return out


def plan_streaming(
    graph: Graph, stages: list[Stage], free: dict[str, int], machine: Machine, precision: str
) -> tuple[list[list[Stage]], list[int]]:
    """Steps and each step's cycles; PlanError naming the kernel that does not fit."""
    height, width = machine.usable_height, machine.usable_width
    pes = machine.usable_pes
    steps = streaming_steps(stages)
    live = live_bytes(graph, steps, free, precision)
    cycles = []
    for i, step in enumerate(steps):
        compute = 0
        for stage in step:
            stage.parts = 1
            cost = RegionCost(stage, 0, machine, precision)
            compute += cost(height, width)[0]
            for node, kernel in zip(stage.nodes, cost.kernels(height, width), strict=True):
                need = kernel.sram_bytes(height, width) + -(-live[i] // pes)
                if need > machine.sram_usable_bytes:
                    raise PlanError(
                        f"streaming: {node.op} %{node.outputs[0].name} needs {need:,} bytes per "
                        f"PE on all {pes:,} PEs of {machine.name} (with the live activations); "
                        f"a PE has {machine.sram_usable_bytes:,}"
                    )
        weights = sum(param_bytes(graph, s.nodes, precision) for s in step)
        cycles.append(streaming_cycles(compute, weights, machine))
    return steps, cycles


@register_pass
class WeightStreaming(WaferPass):
    """Run one layer at a time on the whole wafer with weights streamed in (annotates only).

    A joint (training) graph gets a forward and a backward step per layer, and the layers
    whose activations do not fit in SRAM until their backward step are recomputed there
    (cgc.backends.cerebras.train_steps); their forward nodes are annotated `recompute`.
    """

    name = "weight-streaming"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        machine, stages, free = self.stages(graph)
        recomputed: frozenset[str] = frozenset()
        if joint_loss(graph) is None:
            steps, cycles = plan_streaming(graph, stages, free, machine, self.precision)
        else:
            train, recomputed = choose_recompute(graph, stages, free, machine, self.precision)
            steps = [t.stages for t in train]
            cycles = [t.cycles(machine)[0] for t in train]
        clear(graph)
        rect = [[machine.usable_height, machine.usable_width, machine.usable_pes]]
        step_of = {s.index: i for i, step in enumerate(steps) for s in step}
        for stage in stages:
            again = stage.direction == "forward" and stage.layer in recomputed
            for node in stage.nodes:
                node.meta.update(stage=stage.index, step=step_of[stage.index], region=rect)
                if again:
                    node.meta["recompute"] = True
                if stage.stash_bytes:
                    node.meta["held"] = [stage.stash_bytes, 0, stage.optimizer]
        for node in graph.nodes:
            stage = free.get(node.outputs[0].name)
            if stage is not None:
                node.meta.update(stage=stage, step=step_of[stage])
        stats = {
            "stages": len(stages),
            "steps": len(steps),
            "regions": len(stages),
            "pes": machine.usable_pes,
            "period_cycles": sum(cycles),
        }
        if recomputed:
            stats["recomputed-layers"] = len(recomputed)
        return PassResult(True, stats)
