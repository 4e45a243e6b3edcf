"""Which IR nodes share a wafer region, what a region costs, and the plan the backend places.

Stages. Every node with a kernel that takes PEs belongs to a *stage*, a group of nodes that run
one after another on the same PE rectangle:

- every projection (a linear, or a swiglu with its gate and up weights) starts a new stage (a
  region per weight matrix, or per pair of them), and so does an embedding whose ids are
  computed on the wafer;
- every other kernel (attention, layer norm, residual add, GELU, softmax, ...) joins the stage
  of its latest producer (the one with the highest stage index), so it runs where its input
  already is: attention with the QKV projection, the residual add and the next layer norm with
  the output projection, GELU with the first MLP projection;
- a node other than a linear that reads only host data (parameters, graph inputs) or such
  nodes, like the token and position embeddings and their sum, waits and joins the stage of the
  first node that reads it: lookups alone would make regions far faster than the rest, which a
  pipeline cannot use;
- free ops (reshape, slice, concat, expand, cast, constant) take no PEs: they belong to their
  latest producer's stage (or, reading only host data, their earliest consumer's) and ride on
  the routes.

A joint (training) graph, autodiff's (loss, grad.<param> ...), is grouped in two halves: the
nodes the loss depends on as above, then the backward nodes by their layers (see
`_group_backward`), in stages marked `direction="backward"`.

A stage consumes only values of stages with lower or equal index, so running stages in index
order, and each stage's nodes in graph order, is a valid schedule.

A stage whose only node is a linear may be split along N into `parts` regions that each hold
a slice of the weight and receive the same input (the vocabulary projection). The
layer-pipeline and weight-streaming passes annotate `meta["stage"]`, `meta["region"]` (one
`[rows, cols, pes]` per part) and, when pipelined, `meta["slot"]`; `read_plan` rebuilds the
plan from those annotations alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from cgc.backends.cerebras.kernels import Kernel, kernel_for
from cgc.backends.cerebras.kernels.gemm_backward import is_data_gradient, reads_transposed_tokens
from cgc.backends.cerebras.kernels.optimizer import OptimizerUpdate
from cgc.backends.cerebras.machine import Machine
from cgc.backends.cerebras.precision import BYTES
from cgc.errors import CgcError, InputError, IRError
from cgc.ir import Graph, Node, Value

PROJECTION_OPS = frozenset({"linear", "swiglu"})  # weight-stationary GEMMs: a stage each
ANCHOR_OPS = PROJECTION_OPS | {"embedding"}  # the ops that keep a weight matrix resident
# Longest side of a region over its shortest: thin regions would make the tiling's row or
# column chains long and the activations cross many hops.
ASPECT_LIMIT = 4
# A training region's anchor tiles within a budget rounded down to this many bytes: the share
# of the region's holdings differs for every rectangle the sizer tries, and a budget of its own
# for each would make every try tile the anchor afresh.
HELD_GRAIN = 512

# A transformer block's module path: GPT-2's `h.N`, Llama's, OPT's, NeoX's and PyTorch's
# `layers.N`, `blocks.N`.
_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|blocks)\.(\d+)(?:\.|$)")


class PlanError(CgcError):
    """The model does not fit the wafer in the requested execution mode."""


@dataclass
class Stage:
    """Nodes that run one after another on the same region(s)."""

    index: int
    nodes: list[Node]  # kernels that take PEs, in graph order
    layer: str  # "pre", "h.N" (transformer block N) or "post": the wafer map's colours
    anchor: Node | None  # the linear or embedding that started it
    parts: int = 1
    step: int | None = None  # weight streaming: the step (layer) it runs in
    direction: str = "forward"  # "backward" in a joint graph's backward half
    # Pipelined training (train_pipeline.py): forward activations the stage's backward kernels
    # read, and the elements of the parameters it updates with `optimizer`.
    stash_bytes: int = 0
    update_elements: int = 0
    optimizer: str = "adamw"
    # Weight-streaming training: the kernels run one after another on the whole wafer, each
    # loading its operands for its turn, so they do not hold SRAM at the same time.
    sequential: bool = False

    @property
    def splittable(self) -> bool:
        """A lone linear: its output features can be split over several regions."""
        return len(self.nodes) == 1 and self.nodes[0].op == "linear" and self.out_features > 1

    @property
    def out_features(self) -> int:
        """N of the stage's first node (a linear's output features)."""
        return self.nodes[0].inputs[1].shape[0]


def group_stages(
    graph: Graph, machine: Machine, precision: str
) -> tuple[list[Stage], dict[str, int]]:
    """The graph's stages, and the stage of every free node (by its first output's name).

    A joint graph's forward half is grouped as any forward graph, its backward half by
    `_group_backward`.
    """
    loss = joint_loss(graph)
    if loss is None:
        stages, free, _ = _group_forward(graph, graph.nodes, machine, precision)
        return stages, free
    ahead = _ancestors(loss)
    forward = [n for n in graph.nodes if id(n) in ahead]
    stages, free, value_stage = _group_forward(graph, forward, machine, precision)
    backward = [n for n in graph.nodes if id(n) not in ahead]
    _group_backward(graph, backward, stages, free, value_stage, machine, precision)
    return stages, free


def _group_forward(
    graph: Graph, nodes: list[Node], machine: Machine, precision: str
) -> tuple[list[Stage], dict[str, int], dict[str, int]]:
    """Stages of `nodes` (a forward graph, or the forward half of a joint graph), the stage of
    every free node, and the stage of every value they produce."""
    stages: list[Stage] = []
    value_stage: dict[str, int] = {}
    free: dict[str, int] = {}
    # Nodes reading only host data or each other, by id; "pure" ones (constants) read no kernel.
    waiting: dict[int, Node] = {}
    pure: dict[int, bool] = {}
    block_seen = False

    def waiting_kernels(node: Node) -> list[Node]:
        """Waiting producers of `node` that depend on a kernel (the pure ones stay waiting)."""
        return [
            v.producer
            for v in node.inputs
            if v.producer is not None and id(v.producer) in waiting and not pure[id(v.producer)]
        ]

    def place(node: Node, stage: int) -> None:
        """Put `node`, and the waiting kernels it reads (transitively), in `stage`."""
        for producer in waiting_kernels(node):
            del waiting[id(producer)]
            place(producer, stage)
        if kernel_for(node, machine, precision).free:
            free[node.outputs[0].name] = stage
        else:
            stages[stage].nodes.append(node)
        for v in node.outputs:
            value_stage[v.name] = stage

    def new_stage(node: Node) -> int:
        nonlocal block_seen
        layer = _layer(node, block_seen)
        block_seen = block_seen or layer.startswith("h.")
        stages.append(Stage(len(stages), [], layer, node if node.op in ANCHOR_OPS else None))
        return len(stages) - 1

    for node in nodes:
        is_free = kernel_for(node, machine, precision).free
        produced = [value_stage[v.name] for v in node.inputs if v.name in value_stage]
        if produced and (is_free or node.op not in ANCHOR_OPS):
            place(node, max(produced))
        elif (
            node.op in PROJECTION_OPS
            or node.op in ANCHOR_OPS
            and (produced or waiting_kernels(node))
        ):
            place(node, new_stage(node))
        else:
            waiting[id(node)] = node
            pure[id(node)] = is_free and not waiting_kernels(node)
    left = [n for n in waiting.values() if not pure[id(n)]]
    if left:  # kernels nothing placed reads: outputs computed from host data alone
        stage = new_stage(left[0])
        for node in left:
            if id(node) in waiting:
                del waiting[id(node)]
                place(node, stage)
    if not stages:
        raise InputError(
            f"graph @{graph.name} has no operation that runs on PEs; nothing to place on a wafer"
        )
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    for stage in stages:
        stage.nodes.sort(key=lambda n: order[id(n)])
    _with_first_consumer(list(waiting.values()), order, stages, free, value_stage)
    return stages, free, value_stage


def _with_first_consumer(
    nodes: list[Node],
    order: dict[int, int],
    stages: list[Stage],
    free: dict[str, int],
    value_stage: dict[str, int],
) -> None:
    """Constants run with their earliest consumer (users come later, so resolve backwards)."""
    for node in sorted(nodes, key=lambda n: -order[id(n)]):
        users = [u for v in node.outputs for u in v.users]
        found = [free.get(u.outputs[0].name, value_stage.get(u.outputs[0].name)) for u in users]
        found = [s for s in found if s is not None]
        free[node.outputs[0].name] = min(found) if found else stages[-1].index


def _layer(node: Node, block_seen: bool) -> str:
    """The transformer block a stage belongs to, from its first node's module scope."""
    match = _BLOCK.search(node.meta.get("scope", ""))
    if match:
        return f"h.{int(match[1])}"
    return "post" if block_seen else "pre"


GRAD = "grad."  # autodiff's prefix of a joint graph's gradient outputs


def joint_loss(graph: Graph) -> Value | None:
    """The loss of a joint (training) graph: its first output, 0-d, followed by gradient
    outputs `grad.<param>` (what autodiff returns); None for any other graph."""
    if not graph.outputs or not any(v.name.startswith(GRAD) for v in graph.outputs[1:]):
        return None
    loss = graph.outputs[0]
    return loss if loss.type.rank == 0 and loss.type.is_float else None


def _ancestors(value: Value) -> set[int]:
    """Ids of the nodes `value` depends on, its producer included."""
    found: set[int] = set()
    todo = [value.producer] if value.producer is not None else []
    while todo:
        node = todo.pop()
        if id(node) not in found:
            found.add(id(node))
            todo += [v.producer for v in node.inputs if v.producer is not None]
    return found


def is_backward_anchor(node: Node) -> bool:
    """Whether a backward node starts a stage: it keeps a weight-sized operand or accumulator
    resident (a linear, a data gradient with its weight, a weight or embedding gradient)."""
    return (
        node.op in ANCHOR_OPS
        or node.op == "embedding_grad"
        or is_data_gradient(node)
        or reads_transposed_tokens(node)
    )


def _group_backward(
    graph: Graph,
    nodes: list[Node],
    stages: list[Stage],
    free: dict[str, int],
    value_stage: dict[str, int],
    machine: Machine,
    precision: str,
) -> None:
    """Add the stages of a joint graph's backward half (nodes that do not feed the loss).

    Autodiff gives each backward node the scope of the forward node it differentiates, so a
    node's layer is its scope's block (h.N), or "post" before the first block's backward and
    "pre" after it; a node without a scope takes its latest backward producer's layer. A node
    that keeps a weight-sized operand or accumulator resident (`is_backward_anchor`) starts a
    stage of its layer, so a weight matrix gets a stage for its data gradient and one for its
    weight gradient. Any other kernel joins the latest backward stage of its layer when that
    comes after all its producers, else its latest producer's stage when that is a backward
    one, else starts a stage; free nodes ride with their latest producer, and constants with
    their first consumer.
    """
    block_seen = False
    latest: dict[str, int] = {}  # layer -> its latest backward stage
    waiting: list[Node] = []

    def new_stage(node: Node, layer: str) -> int:
        anchor = node if is_backward_anchor(node) else None
        stages.append(Stage(len(stages), [], layer, anchor, direction="backward"))
        latest[layer] = len(stages) - 1
        return len(stages) - 1

    for node in nodes:
        produced = [value_stage[v.name] for v in node.inputs if v.name in value_stage]
        is_free = kernel_for(node, machine, precision).free
        if is_free and not produced:
            waiting.append(node)
            continue
        match = _BLOCK.search(node.meta.get("scope", ""))
        if match:
            layer = f"h.{int(match[1])}"
            block_seen = True
        elif node.meta.get("scope") or not produced:
            layer = "pre" if block_seen else "post"
        else:
            behind = [s for s in produced if stages[s].direction == "backward"]
            layer = stages[max(behind)].layer if behind else ("pre" if block_seen else "post")
        last = max(produced, default=-1)
        if is_free:
            stage = last
        elif is_backward_anchor(node):
            stage = new_stage(node, layer)
        elif latest.get(layer, -1) >= last:
            stage = latest[layer]
        elif last >= 0 and stages[last].direction == "backward":
            stage = last
        else:
            stage = new_stage(node, layer)
        if is_free:
            free[node.outputs[0].name] = stage
        else:
            stages[stage].nodes.append(node)
        for v in node.outputs:
            value_stage[v.name] = stage
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    _with_first_consumer(waiting, order, stages, free, value_stage)


def part_range(n: int, parts: int, part: int) -> tuple[int, int]:
    """Output features [n0, n1) of `part` when n features are split into `parts` regions."""
    size = -(-n // parts)
    return min(n, part * size), min(n, (part + 1) * size)


def part_node(node: Node, n0: int, n1: int) -> Node:
    """A linear computing features [n0, n1) of `node` (a scratch node for its kernel)."""
    from cgc.ir import TensorType

    g = Graph("part")
    x, w = node.inputs[0], node.inputs[1]
    args = [
        g.add_input("x", x.type),
        g.add_param("w", TensorType((n1 - n0, *w.shape[1:]), w.dtype)),
    ]
    if len(node.inputs) == 3:
        args.append(g.add_param("b", TensorType((n1 - n0,), node.inputs[2].dtype)))
    return g.add_node("linear", args, dict(node.attrs), dict(node.meta))


def _signature(kernel: Kernel) -> tuple:
    return (
        type(kernel).__name__,
        kernel.op,
        kernel.in_types,
        kernel.out_types,
        repr(sorted(kernel.attrs.items())),
        kernel.machine,
        kernel.precision,
    )


_IDS: dict[tuple, int] = {}
_COSTS: dict[tuple[int, int, int], tuple[int, int]] = {}
_COSTS_LIMIT = 2_000_000


def param_bytes(graph: Graph, nodes: list[Node], precision: str) -> int:
    """Bytes of the parameters `nodes` read, in `precision` (what streaming moves per use)."""
    names = {v.name for n in nodes for v in n.inputs if v.name in graph.params}
    return sum(
        graph.params[n].type.numel * (BYTES[precision] if graph.params[n].type.is_float else 4)
        for n in names
    )


def streaming_steps(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive stages of the same layer (and direction), one step each."""
    steps: list[list[Stage]] = []
    for stage in stages:
        last = steps[-1][0] if steps else None
        if last is not None and (last.layer, last.direction) == (stage.layer, stage.direction):
            steps[-1].append(stage)
        else:
            steps.append([stage])
    return steps


def stream_cycles(weight_bytes: int, machine: Machine) -> int:
    """Cycles to stream `weight_bytes` in from off-wafer memory."""
    return -(-weight_bytes * int(machine.clock_hz) // int(machine.stream_bytes_per_s))


def step_overhead(machine: Machine) -> int:
    """What starts a weight-streaming step: a wafer-wide broadcast and a task activation."""
    return (
        machine.hop_latency_cycles * (machine.usable_width + machine.usable_height)
        + machine.task_overhead_cycles
    )


def streaming_cycles(compute: int, weight_bytes: int, machine: Machine) -> int:
    """Cycles of one weight-streaming step: compute overlaps the weights' arrival."""
    return max(compute, stream_cycles(weight_bytes, machine)) + step_overhead(machine)


class RegionCost:
    """Cycles and per-PE SRAM of a region's kernels on a rows x cols rectangle.

    The kernels run one after another on the same PEs, so cycles add up; each keeps its
    resident operands and buffers, so SRAM adds up too (not in a `sequential` stage of weight
    streaming training, where each kernel loads its operands for its turn and the busiest
    kernel counts), with what a training region holds
    besides (`held_bytes`: activations kept for the backward, optimizer state), which every
    kernel's tiling must leave free. A linear's tiling replicates its weights for speed as far
    as SRAM allows, so the stage's anchor is given the SRAM the other kernels leave too (its
    `sram_budget`), not the whole PE. Results are memoised by shape and
    shared by regions with identical kernels (every transformer block has the same ones).
    """

    def __init__(self, stage: Stage, part: int, machine: Machine, precision: str) -> None:
        self.machine = machine
        self.precision = precision
        if stage.parts == 1:
            self.nodes = list(stage.nodes)
            anchor = stage.anchor
        else:
            n0, n1 = part_range(stage.out_features, stage.parts, part)
            self.nodes = [part_node(stage.nodes[0], n0, n1)]
            anchor = self.nodes[0]
        self.anchor = next((i for i, n in enumerate(self.nodes) if n is anchor), None)
        self.full = [kernel_for(n, machine, precision) for n in self.nodes]
        self._budgeted: dict[tuple[int, int], Kernel] = {}
        self.stash = stage.stash_bytes
        self.update = None
        if stage.update_elements:
            self.update = OptimizerUpdate(
                stage.optimizer, stage.update_elements, machine, precision
            )
        self.sequential = stage.sequential
        held = (stage.stash_bytes, stage.update_elements, stage.optimizer, stage.sequential)
        key = (tuple(_signature(k) for k in self.full), self.anchor, held)
        self.id = _IDS.setdefault(key, len(_IDS))  # small keys: hashing signatures is slow

    def held_bytes(self, rows: int, cols: int) -> int:
        """SRAM per PE held besides the kernels: the stash's and the update state's shares."""
        state = self.update.sram_bytes(rows, cols) if self.update is not None else 0
        return -(-self.stash // (rows * cols)) + state

    def kernels(self, rows: int, cols: int) -> list[Kernel]:
        """The kernels on a rows x cols rectangle: the anchor tiles within the SRAM the other
        kernels and the region's holdings leave; in a sequential stage, every kernel within
        what the holdings leave."""
        held = self.held_bytes(rows, cols)
        usable = self.machine.sram_usable_bytes
        if self.sequential:
            return [self._within(i, usable - held) for i in range(len(self.full))]
        if self.anchor is None:
            return self.full
        out = list(self.full)
        others = sum(k.sram_bytes(rows, cols) for i, k in enumerate(out) if i != self.anchor)
        budget = usable - held - others
        if held:  # the holdings' share varies with the rectangle: round so tilings are shared
            budget -= budget % HELD_GRAIN
        out[self.anchor] = self._within(self.anchor, budget)
        return out

    def _within(self, index: int, budget: int) -> Kernel:
        """Kernel `index` tiling within `budget` bytes per PE (the full kernel for all SRAM)."""
        budget = max(0, budget)
        if budget == self.machine.sram_usable_bytes:
            return self.full[index]
        if (index, budget) not in self._budgeted:
            budgeted = replace(self.machine, sram_usable_bytes=budget)
            self._budgeted[index, budget] = kernel_for(self.nodes[index], budgeted, self.precision)
        return self._budgeted[index, budget]

    def __call__(self, rows: int, cols: int) -> tuple[int, int]:
        """(cycles, SRAM bytes per PE) on a rows x cols rectangle."""
        key = (self.id, rows, cols)
        hit = _COSTS.get(key)
        if hit is None:
            if len(_COSTS) > _COSTS_LIMIT:
                _COSTS.clear()
            kernels = self.kernels(rows, cols)
            srams = [k.sram_bytes(rows, cols) for k in kernels]
            hit = (
                sum(k.cycles(rows, cols) for k in kernels),
                (max(srams) if self.sequential else sum(srams)) + self.held_bytes(rows, cols),
            )
            _COSTS[key] = hit
        return hit


@dataclass
class Region:
    """One PE rectangle of the plan: a stage, or one part of a split stage."""

    index: int
    stage: Stage
    part: int
    rows: int
    cols: int
    slot: tuple[int, int, int] | None  # (band, column, cell) of the pipelined floorplan
    cost: RegionCost

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    @property
    def cycles(self) -> int:
        """Cycles of one pass over the batch."""
        return self.cost(self.rows, self.cols)[0]

    @property
    def sram_bytes(self) -> int:
        """SRAM the busiest PE needs."""
        return self.cost(self.rows, self.cols)[1]

    @property
    def kernels(self) -> list[Kernel]:
        """The kernels as they run on this region's rectangle."""
        return self.cost.kernels(self.rows, self.cols)


@dataclass
class Plan:
    """Stages and their regions, as the partitioning passes annotated them."""

    mode: str  # "pipelined" or "streaming"
    machine: Machine
    precision: str
    graph: Graph
    stages: list[Stage]
    regions: list[Region]
    free: dict[str, int]  # stage of each free node, by output name

    def stage_regions(self, stage: int) -> list[Region]:
        """The regions of one stage, by part."""
        return [r for r in self.regions if r.stage.index == stage]


def read_plan(graph: Graph, machine: Machine, precision: str, mode: str) -> Plan:
    """The plan the passes annotated on `graph` (stage, region, slot of every kernel node)."""
    stages, free = group_stages(graph, machine, precision)
    joint = joint_loss(graph) is not None
    regions: list[Region] = []
    for stage in stages:
        node = stage.nodes[0]
        annotated = {n.meta.get("stage") for n in stage.nodes}
        if annotated != {stage.index} or "region" not in node.meta:
            raise IRError(
                f"%{node.outputs[0].name} is not annotated by a partitioning pass; run "
                "layer-pipeline or weight-streaming first"
            )
        rects = node.meta["region"]
        slots = node.meta.get("slot") or [None] * len(rects)
        stage.parts = len(rects)
        stage.step = node.meta.get("step")
        if "held" in node.meta:  # training: kept activations and the optimizer update
            stage.stash_bytes, stage.update_elements, stage.optimizer = node.meta["held"]
        stage.sequential = mode == "streaming" and joint
        for part, ((rows, cols, _), slot) in enumerate(zip(rects, slots, strict=True)):
            cost = RegionCost(stage, part, machine, precision)
            regions.append(
                Region(
                    len(regions),
                    stage,
                    part,
                    rows,
                    cols,
                    tuple(slot) if slot is not None else None,
                    cost,
                )
            )
    return Plan(mode, machine, precision, graph, stages, regions, free)
