"""The simulated Cerebras backend: machine model, kernel library and tile-level execution.

A planner sizes and places one rectangle per kernel using:

    machine = get_machine("wse2")                  # or "wse3", "fabric:32x32"
    kernel = kernel_for(node, machine, "cb16")     # one IR node: types and attrs only
    kernel.min_rect(), kernel.min_pes()            # smallest rectangle whose SRAM fits
    kernel.tiling(rows, cols)                      # plain data for program.json
    kernel.sram_bytes(rows, cols)                  # bytes per PE
    kernel.cycles(rows, cols)                      # one pass over the node's input
    kernel.cost(rows, cols)                        # the same, as compute/fabric/latency
    kernel.execute(inputs, weights, rows, cols, tiling)  # what the tiles compute
"""

from cgc.backends.cerebras.artifact import CerebrasArtifact, compile, load
from cgc.backends.cerebras.kernels import Cost, Kernel, kernel_for
from cgc.backends.cerebras.machine import PRESETS, WSE2, WSE3, Machine, get_machine
from cgc.backends.cerebras.partition import plan
from cgc.backends.cerebras.planner import Plan, PlanError
from cgc.backends.cerebras.precision import PRECISIONS, UNIT_ROUNDOFF, round_to

__all__ = [
    "PRECISIONS",
    "PRESETS",
    "UNIT_ROUNDOFF",
    "WSE2",
    "WSE3",
    "CerebrasArtifact",
    "Cost",
    "Kernel",
    "Machine",
    "Plan",
    "PlanError",
    "compile",
    "get_machine",
    "kernel_for",
    "load",
    "plan",
    "round_to",
]
