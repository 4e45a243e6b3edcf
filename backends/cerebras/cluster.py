"""A cluster of S systems training data parallel: the step time with SwarmX, and weak scaling.

Every system runs the same training program on its own share of the batch (its micro-batches,
one program pass each). What the systems share goes through SwarmX, a tree of broadcast-reduce
nodes between MemoryX and the systems.

Published (Cerebras glossary pages "SwarmX" and "MemoryX"; MACHINE_FACTS.md):
- each system's I/O is 1.2 Tb/s (12 x 100 GbE), 150 GB/s each way (Ethernet is full duplex);
- a SwarmX node has a set of 100 Gb/s interfaces and broadcasts 1:4 (or two 1:2), reduces
  floating-point gradients at line rate, and nodes form a bidirectional tree whose node count
  grows linearly with S, so that every system still gets its full 1.2 Tb/s of weights; the
  latency between MemoryX and the systems grows logarithmically with S;
- MemoryX's I/O matches a system's, it updates the weights between iterations, and weights are
  streamed ahead of the layer that needs them except at the iteration boundary.

Inferred or assumed here: a tree of fan-out 4, so ceil(log4 S) levels; SWARMX_HOP_S per level
(assumed: no figure is published; it is a store-and-forward of a 100 GbE frame plus switching);
weight streaming broadcasts each step's weights (S copies leave the tree, one enters it) and
reduces each step's gradients in the tree as they stream out, at the same 150 GB/s per system
as on one system, so those transfers cost what they cost on one system (they are the program's
`stream` and `gradient` cycles, overlapped with compute as the program states) and S adds the
tree's latency twice per iteration: the reduction of the last gradients before MemoryX can
update, and the broadcast of the first weights after. A layer-pipelined program keeps its
weights on the wafer, so its systems sum their gradients through the tree and get the summed
gradients back before every system updates its copy: one reduction and one broadcast of every
gradient per iteration, not overlapped.

A step of the cluster: micro-batches x the program's pass, the iteration's bubble, and the tree
latency (streaming), or the program's step and the gradients' exchange (pipelined). Weak
scaling keeps the micro-batches per system; efficiency = tokens/s of S systems / (S x tokens/s
of one).
"""

from __future__ import annotations

from math import ceil, log
from typing import Any

from cgc.backends.cerebras.precision import BYTES
from cgc.errors import InputError

SYSTEM_IO_BYTES_PER_S = 150e9  # 1.2 Tb/s = 12 x 100 GbE per CS-2/CS-3 (product pages)
SWARMX_FANOUT = 4  # 1:4 broadcast-reduce per SwarmX node (Cerebras SwarmX glossary)
SWARMX_HOP_S = 2e-6  # assumed per tree level: no published figure


def levels(systems: int) -> int:
    """SwarmX tree levels between MemoryX and `systems` systems (0 for one system)."""
    return 0 if systems <= 1 else ceil(log(systems, SWARMX_FANOUT) - 1e-9)


def cluster_step(report: dict[str, Any], systems: int, micro_batches: int = 1) -> dict[str, Any]:
    """The predicted step of `systems` systems each running `micro_batches` passes of the
    program `report` describes (report.estimate of a training program)."""
    if systems < 1 or micro_batches < 1:
        raise InputError(
            f"a cluster needs at least 1 system and 1 micro-batch, got {systems} and "
            f"{micro_batches}"
        )
    training = report.get("training")
    if training is None:
        raise InputError("the cluster report needs a training program (a joint graph's plan)")
    clock = training["clock_hz"]
    tree = 2 * levels(systems) * SWARMX_HOP_S
    if training["update"] == "memoryx":
        iteration = report["period_cycles"] - training["bubble_cycles"]
        wafer_s = (micro_batches * iteration + training["bubble_cycles"]) / clock
        broadcast_s = micro_batches * training["weight_bytes_in"] / SYSTEM_IO_BYTES_PER_S
        reduce_s = micro_batches * training["gradient_bytes_out"] / SYSTEM_IO_BYTES_PER_S
        exposed_s = tree
    else:
        wafer_s = (micro_batches * training["flow_cycles"] + training["update_cycles"]) / clock
        gradients = training["updated_elements"] * BYTES[report["precision"]]
        broadcast_s = reduce_s = gradients / SYSTEM_IO_BYTES_PER_S if systems > 1 else 0.0
        exposed_s = broadcast_s + reduce_s + tree
    step_s = wafer_s + exposed_s
    tokens = systems * micro_batches * report["tokens_per_pass"]
    return {
        "systems": systems,
        "micro_batches": micro_batches,
        "tokens_per_step": tokens,
        "swarmx_levels": levels(systems),
        "broadcast_s": broadcast_s,
        "reduce_s": reduce_s,
        "exposed_s": exposed_s,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "tokens_per_s_per_system": tokens / step_s / systems,
    }


def weak_scaling(
    report: dict[str, Any], systems: list[int], micro_batches: int = 1
) -> list[dict[str, Any]]:
    """`cluster_step` for each cluster size, with its efficiency against one system."""
    one = cluster_step(report, 1, micro_batches)
    out = []
    for s in systems:
        step = cluster_step(report, s, micro_batches)
        step["efficiency"] = step["tokens_per_s"] / (s * one["tokens_per_s"])
        out.append(step)
    return out
