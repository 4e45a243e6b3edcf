"""Weight-streaming training steps: what streams in, stays, is recomputed and streams out.

A joint graph's stages (planner.group_stages) form steps as in inference, one per layer and
direction: the forward steps in layer order, then the backward steps in reverse. Each step runs
on the whole wafer while its parameters stream in from MemoryX (a backward step streams its
layer's weights in again: the data gradients and layer norm backward read them) and the
gradients it completes stream out, both over the system's I/O, which is full duplex (Ethernet),
so a step takes max(compute, weights in, gradients out) plus a wafer-wide broadcast.

What stays: a forward value that a backward step reads is kept in SRAM across the steps
between them (the stash), unless its layer is *recomputed*: then the layer's forward step runs
again at the start of its backward step (its weights are streaming in for that step anyway),
and what only the backward reads is dropped after the forward step. The layer's inputs, which
the recomputation reads, stay instead. `choose_recompute` recomputes layers, first to last, until
every step's kernels fit in SRAM beside the activations live across it.

The optimizer update is not on the wafer: MemoryX applies it to its fp32 master weights, and
the next step's 16-bit weights stream back in (report.py counts the bubble this leaves at the
iteration boundary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cgc.backends.cerebras.machine import Machine
from cgc.backends.cerebras.planner import (
    GRAD,
    PlanError,
    RegionCost,
    Stage,
    param_bytes,
    step_overhead,
    stream_cycles,
    streaming_steps,
)
from cgc.backends.cerebras.precision import BYTES
from cgc.ir import Graph, Node, Value

BOUNDS = ("compute", "weights in", "gradients out")


@dataclass
class TrainStep:
    """One weight-streaming step of a training graph and its traffic."""

    index: int
    layer: str
    direction: str  # "forward" or "backward"
    stages: list[Stage]
    nodes: list[Node]  # kernels and route ops, in graph order
    recompute: list[Node] = field(default_factory=list)  # forward nodes run again first
    compute_cycles: int = 0
    recompute_cycles: int = 0
    weight_bytes: int = 0  # parameters streamed in
    gradient_bytes: int = 0  # gradients streamed out
    live_in: int = 0  # activation bytes live when it starts
    live_out: int = 0  # ... and when it ends (the stash it leaves)
    drop: list[str] = field(default_factory=list)  # values freed at its end (recomputed later)

    def cycles(self, machine: Machine) -> tuple[int, str]:
        """Cycles of the step and what bounds it (one of BOUNDS)."""
        parts = (
            self.compute_cycles + self.recompute_cycles,
            stream_cycles(self.weight_bytes, machine),
            stream_cycles(self.gradient_bytes, machine),
        )
        worst = max(range(3), key=parts.__getitem__)
        return parts[worst] + step_overhead(machine), BOUNDS[worst]


def value_bytes(v: Value, precision: str) -> int:
    """Bytes of an activation on the wafer."""
    return v.type.numel * (BYTES[precision] if v.type.is_float else 4)


def training_steps(
    graph: Graph,
    stages: list[Stage],
    free: dict[str, int],
    machine: Machine,
    precision: str,
    recomputed: frozenset[str] = frozenset(),
) -> list[TrainStep]:
    """The steps of a joint graph's streaming plan with the layers in `recomputed` recomputed;
    sets every stage's `step` and, as its `stash_bytes`, the activations live across its step
    (its kernels tile within the SRAM they leave). Cycles are for kernels on the whole usable
    rectangle."""
    height, width = machine.usable_height, machine.usable_width
    groups = streaming_steps(stages)
    stage_step = {s.index: i for i, group in enumerate(groups) for s in group}
    steps = []
    for i, group in enumerate(groups):
        for stage in group:
            stage.step, stage.parts = i, 1
        steps.append(TrainStep(i, group[0].layer, group[0].direction, group, []))
    kernel_stage = {id(n): s.index for s in stages for n in s.nodes}
    for node in graph.nodes:
        stage = kernel_stage.get(id(node), free.get(node.outputs[0].name))
        if stage is not None:
            steps[stage_step[stage]].nodes.append(node)
    forward = {s.layer: s for s in steps if s.direction == "forward"}
    for step in steps:
        again = forward.get(step.layer) if step.direction == "backward" else None
        if again is not None and step.layer in recomputed:
            step.recompute = list(again.nodes)
    _live(graph, steps, precision)
    for step in steps:
        for stage in step.stages:  # kernels tile within what the live activations leave
            stage.stash_bytes, stage.update_elements = max(step.live_in, step.live_out), 0
            stage.sequential = True
        step.compute_cycles = sum(
            RegionCost(stage, 0, machine, precision)(height, width)[0] for stage in step.stages
        )
    for step in steps:
        if step.recompute:
            step.recompute_cycles = forward[step.layer].compute_cycles
        read = [*step.recompute, *step.nodes]
        step.weight_bytes = param_bytes(graph, read, precision)
        step.gradient_bytes = sum(
            value_bytes(v, precision)
            for n in step.nodes
            for v in n.outputs
            if v.name.startswith(GRAD) and v in graph.outputs
        )
    return steps


def _live(graph: Graph, steps: list[TrainStep], precision: str) -> None:
    """Set each step's live bytes and drops: a use is served by the latest production of the
    value at or before it (a recomputation produces again), and the value is live across the
    boundaries in between. Gradients leave in the step that completes them; other graph
    outputs (the loss) are used after the last step."""
    produced: dict[str, list[int]] = {}
    uses: dict[str, list[int]] = {}
    values: dict[str, Value] = {}
    for step in steps:
        for node in [*step.recompute, *step.nodes]:
            for v in node.inputs:
                if v.producer is not None:
                    uses.setdefault(v.name, []).append(step.index)
            for v in node.outputs:
                produced.setdefault(v.name, []).append(step.index)
                values[v.name] = v
    for v in graph.outputs:
        if not v.name.startswith(GRAD):
            uses.setdefault(v.name, []).append(len(steps))
    boundary = [0] * (len(steps) + 1)  # bytes live entering step i (i = len: after the last)
    for name, made in produced.items():
        size = value_bytes(values[name], precision)
        served: dict[int, int] = {}  # production step -> its last use
        for use in uses.get(name, []):
            source = max(p for p in made if p <= use)
            served[source] = max(served.get(source, source), use)
        for source, last in served.items():
            for b in range(source + 1, last + 1):
                boundary[b] += size
            if any(p > last for p in made) and last < len(steps):
                steps[last].drop.append(name)
    for step in steps:
        step.live_in, step.live_out = boundary[step.index], boundary[step.index + 1]


def working_bytes(step: TrainStep, machine: Machine, precision: str) -> tuple[int, Node]:
    """The most SRAM one of the step's kernels needs per PE on the whole wafer (tiled within
    what the live activations leave), and its node."""
    height, width = machine.usable_height, machine.usable_width
    best = (0, step.stages[0].nodes[0])
    for stage in step.stages:
        cost = RegionCost(stage, 0, machine, precision)
        for node, kernel in zip(stage.nodes, cost.kernels(height, width), strict=True):
            best = max(best, (kernel.sram_bytes(height, width), node), key=lambda b: b[0])
    return best


def overflow(steps: list[TrainStep], machine: Machine, precision: str) -> str | None:
    """Why the steps do not fit in SRAM (the first kernel that does not fit beside the
    activations live across its step), or None."""
    pes = machine.usable_pes
    for step in steps:
        kernel, node = working_bytes(step, machine, precision)
        need = kernel + -(-max(step.live_in, step.live_out) // pes)
        if need > machine.sram_usable_bytes:
            return (
                f"{node.op} %{node.outputs[0].name} needs {need:,} bytes per PE on all "
                f"{pes:,} PEs of {machine.name} (with {max(step.live_in, step.live_out):,} "
                f"bytes of live activations); a PE has {machine.sram_usable_bytes:,}"
            )
    return None


def choose_recompute(
    graph: Graph, stages: list[Stage], free: dict[str, int], machine: Machine, precision: str
) -> tuple[list[TrainStep], frozenset[str]]:
    """The steps with the fewest layers recomputed, first layers first, that fit in SRAM, and
    those layers; PlanError when even recomputing every layer does not fit.

    Recomputing one more layer never keeps more activations, so the count is bisected.
    """
    steps = training_steps(graph, stages, free, machine, precision)
    if overflow(steps, machine, precision) is None:
        return steps, frozenset()
    backward = {s.layer for s in steps if s.direction == "backward"}
    layers = [s.layer for s in steps if s.direction == "forward" and s.layer in backward]

    def attempt(count: int) -> tuple[list[TrainStep], str | None]:
        chosen = frozenset(layers[:count])
        steps = training_steps(graph, stages, free, machine, precision, chosen)
        return steps, overflow(steps, machine, precision)

    _, problem = attempt(len(layers))
    if problem is not None:
        raise PlanError(
            f"streaming: {problem}, even with every layer recomputed; train with a smaller "
            "batch (fewer tokens per step)"
        )
    lo, hi = 0, len(layers)  # lo does not fit, hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid)[1] is None:
            hi = mid
        else:
            lo = mid
    chosen = frozenset(layers[:hi])  # stages keep what the last call to training_steps set
    return training_steps(graph, stages, free, machine, precision, chosen), chosen
