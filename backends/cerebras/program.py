"""The emitted wafer program: plain data (`program.json`) that the simulator executes as stated.

Schema `cgc.cerebras.program/1`:

- `machine`: the target's geometry and rates; `mode` ("pipelined" or "streaming");
  `precision` (fp32, fp16, bf16, cb16: storage and multiply precision, fp32 accumulation);
- `values`: dtype and shape of every graph input, parameter and node output; `inputs`,
  `outputs`, `params` name them; `weights`: the weights file, or null with the reason;
- `regions`: id, stage, part/parts, layer, `rect` (x, y, cols, rows on the fabric), slot,
  cycles, sram_bytes, and `kernels` in execution order, each with node, op, attrs,
  `operands` (in node-input order; those at `weight_slots` are resident in SRAM, the others
  stream in), `outputs`, `features` ([n0, n1) of a split projection, else null), `tiling` (as
  the kernel library states it for the rectangle and `sram_budget`, the SRAM per PE its tiling
  may use), precision, cycles, sram_bytes, flops;
- `route_ops`: the free ops (reshape, slice, ...) the routes apply, with their stage;
- `routes`: value, source and target regions, color, hops per target, legs (XY corner points),
  words per pass;
- `schedule`: per stage in order, its regions and the nodes to run in order
  (["kernel", node] or ["route_op", node]); `steps`: the weight-streaming steps (null when
  pipelined);
- `training` (joint graphs only): the loss, the gradient outputs and where the optimizer
  update runs (`memoryx`: the host, on fp32 master weights; `wafer`); a training program's
  steps add `direction`, the nodes recomputed at its start (`recompute`, and their cycles),
  `gradient_bytes` streamed out, the activation bytes live entering and leaving it, the values
  dropped at its end (a recomputation makes them again) and its `bound` (compute, weights in
  or gradients out); a pipelined training program's regions add the forward activations they
  keep (`stash_bytes`) and the update they run (`update`: parameter elements and cycles), and
  its `training` section the optimizer and the sequences per step.

`dumps` writes it with sorted keys and no timestamps: the same plan gives the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from cgc.backends.cerebras.kernels.cached_attention import CACHE_SEQUENCES
from cgc.backends.cerebras.kernels.optimizer import norm_cycles
from cgc.backends.cerebras.placement import Placement
from cgc.backends.cerebras.planner import (
    GRAD,
    Plan,
    Region,
    joint_loss,
    param_bytes,
    part_range,
    step_overhead,
    stream_cycles,
    streaming_cycles,
)
from cgc.backends.cerebras.train_steps import training_steps
from cgc.errors import InputError
from cgc.ir import Graph, TensorType

SCHEMA_NAME = "cgc.cerebras.program"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"


def _type(t: TensorType) -> dict[str, Any]:
    return {"dtype": t.dtype, "shape": list(t.shape)}


def _meta(node) -> dict[str, Any]:
    # The caches a cached_attention kernel keeps: its tiling depends on them.
    return {k: node.meta[k] for k in ("scope", "source", CACHE_SEQUENCES) if k in node.meta}


def build_program(plan: Plan, placement: Placement, weights_note: str | None) -> dict[str, Any]:
    """The program for a placed plan; `weights_note` says why there is no weights file."""
    g, m = plan.graph, plan.machine
    program = {
        "schema": SCHEMA,
        "graph": g.name,
        "machine": {
            "name": m.name,
            "fabric": [m.fabric_width, m.fabric_height],
            "usable": {
                "x": m.usable_x,
                "y": m.usable_y,
                "cols": m.usable_width,
                "rows": m.usable_height,
            },
            "sram_usable_bytes": m.sram_usable_bytes,
            "clock_hz": m.clock_hz,
            "colors": m.colors,
            "stream_bytes_per_s": m.stream_bytes_per_s,
            "peak_flops": m.peak_flops(plan.precision),
        },
        "mode": plan.mode,
        "precision": plan.precision,
        "values": _values(g),
        "inputs": [v.name for v in g.inputs],
        "outputs": [v.name for v in g.outputs],
        "params": list(g.params),
        "weights": (
            {"file": "weights.safetensors", "reason": None}
            if weights_note is None
            else {"file": None, "reason": weights_note}
        ),
        "regions": [_region(plan, r.index, placement) for r in plan.regions],
        "route_ops": _route_ops(plan),
        "routes": [
            {
                "id": r.index,
                "value": r.value,
                "source": r.source,
                "targets": r.targets,
                "color": r.color,
                "hops": r.hops,
                "legs": [[list(p) for p in leg] for leg in r.legs],
                "words": r.words,
            }
            for r in placement.routes
        ],
        "schedule": _schedule(plan),
        "steps": _steps(plan) if plan.mode == "streaming" else None,
    }
    loss = joint_loss(g)
    if loss is not None:
        program["training"] = {
            "loss": loss.name,
            "gradients": [v.name for v in g.outputs if v.name.startswith(GRAD)],
            "update": "memoryx" if plan.mode == "streaming" else "wafer",
        }
        if plan.mode == "streaming":
            program["steps"] = _train_steps(plan)
        else:
            program["training"]["optimizer"] = plan.stages[0].optimizer
            program["training"]["sequences"] = g.inputs[0].shape[0] if g.inputs else 1
            program["training"]["norm_cycles"] = norm_cycles(m)
            for entry, region in zip(program["regions"], plan.regions, strict=True):
                entry.update(_held(region))
    return program


def _held(region: Region) -> dict[str, Any]:
    """What a pipelined training region holds besides its kernels, and its update's cycles."""
    update = region.cost.update
    cycles = update.cost(region.rows, region.cols).total if update is not None else 0
    return {
        "stash_bytes": region.stage.stash_bytes,
        "update": {"elements": region.stage.update_elements, "cycles": cycles},
    }


def _values(g: Graph) -> dict[str, dict[str, Any]]:
    out = {v.name: _type(v.type) for v in g.inputs}
    out.update({name: _type(v.type) for name, v in g.params.items()})
    for node in g.nodes:
        out.update({v.name: _type(v.type) for v in node.outputs})
    return out


def _region(plan: Plan, index: int, placement: Placement) -> dict[str, Any]:
    region = plan.regions[index]
    rect = placement.rects[index]
    stage = region.stage
    kernels = []
    for node, kernel in zip(stage.nodes, region.kernels, strict=True):
        features = None
        if stage.parts > 1:
            features = list(part_range(stage.out_features, stage.parts, region.part))
        kernels.append(
            {
                "node": node.outputs[0].name,
                "op": node.op,
                "attrs": dict(node.attrs),
                "meta": _meta(node),
                "operands": [v.name for v in node.inputs],
                "weight_slots": sorted(kernel.weight_slots),
                "outputs": [v.name for v in node.outputs],
                "features": features,
                "tiling": kernel.tiling(region.rows, region.cols),
                "precision": kernel.precision,
                "sram_budget": kernel.machine.sram_usable_bytes,
                "cycles": kernel.cycles(region.rows, region.cols),
                "sram_bytes": kernel.sram_bytes(region.rows, region.cols),
                "flops": kernel.flops(),
            }
        )
    return {
        "id": region.index,
        "stage": stage.index,
        "step": stage.step,
        "part": region.part,
        "parts": stage.parts,
        "layer": stage.layer,
        "rect": {"x": rect.x, "y": rect.y, "cols": rect.cols, "rows": rect.rows},
        "pes": rect.cols * rect.rows,
        "slot": list(region.slot) if region.slot is not None else None,
        "cycles": region.cycles,
        "sram_bytes": region.sram_bytes,
        "kernels": kernels,
    }


def _route_ops(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "node": node.outputs[0].name,
            "op": node.op,
            "attrs": dict(node.attrs),
            "meta": _meta(node),
            "inputs": [v.name for v in node.inputs],
            "outputs": [v.name for v in node.outputs],
            "stage": plan.free[node.outputs[0].name],
        }
        for node in plan.graph.nodes
        if node.outputs[0].name in plan.free
    ]


def _schedule(plan: Plan) -> list[dict[str, Any]]:
    runs: dict[int, list[list[str]]] = {s.index: [] for s in plan.stages}
    kernel_stage = {id(n): s.index for s in plan.stages for n in s.nodes}
    for node in plan.graph.nodes:
        name = node.outputs[0].name
        if id(node) in kernel_stage:
            runs[kernel_stage[id(node)]].append(["kernel", name])
        else:
            runs[plan.free[name]].append(["route_op", name])
    return [
        {
            "stage": s.index,
            "step": s.step,
            "layer": s.layer,
            "regions": [r.index for r in plan.stage_regions(s.index)],
            "run": runs[s.index],
        }
        for s in plan.stages
    ]


def _steps(plan: Plan) -> list[dict[str, Any]]:
    """Weight-streaming steps: stages, compute and weight bytes, cycles."""
    by_step: dict[int, list] = {}
    for stage in plan.stages:
        by_step.setdefault(stage.step, []).append(stage)
    out = []
    for step, stages in sorted(by_step.items()):
        compute = sum(r.cycles for s in stages for r in plan.stage_regions(s.index))
        weights = sum(param_bytes(plan.graph, s.nodes, plan.precision) for s in stages)
        out.append(
            {
                "step": step,
                "layer": stages[0].layer,
                "stages": [s.index for s in stages],
                "compute_cycles": compute,
                "weight_bytes": weights,
                "stream_cycles": stream_cycles(weights, plan.machine),
                "overhead_cycles": step_overhead(plan.machine),
                "cycles": streaming_cycles(compute, weights, plan.machine),
            }
        )
    return out


def _train_steps(plan: Plan) -> list[dict[str, Any]]:
    """A training graph's weight-streaming steps: direction, traffic, recomputation, drops."""
    recomputed = frozenset(
        s.layer
        for s in plan.stages
        if s.direction == "forward" and any(n.meta.get("recompute") for n in s.nodes)
    )
    m = plan.machine
    steps = training_steps(plan.graph, plan.stages, plan.free, m, plan.precision, recomputed)
    out = []
    for step in steps:
        cycles, bound = step.cycles(m)
        out.append(
            {
                "step": step.index,
                "layer": step.layer,
                "direction": step.direction,
                "stages": [s.index for s in step.stages],
                "compute_cycles": step.compute_cycles,
                "recompute": [n.outputs[0].name for n in step.recompute],
                "recompute_cycles": step.recompute_cycles,
                "weight_bytes": step.weight_bytes,
                "stream_cycles": stream_cycles(step.weight_bytes, m),
                "gradient_bytes": step.gradient_bytes,
                "gradient_cycles": stream_cycles(step.gradient_bytes, m),
                "live_bytes": [step.live_in, step.live_out],
                "drop": step.drop,
                "overhead_cycles": step_overhead(m),
                "cycles": cycles,
                "bound": bound,
            }
        )
    return out


def dumps(program: dict[str, Any]) -> str:
    """The program as JSON text: sorted keys, no timestamps, one trailing newline."""
    return json.dumps(program, indent=1, sort_keys=True) + "\n"


def loads(text: str, where: str) -> dict[str, Any]:
    """A program read back, after checking it is one and of a schema this cgc reads."""
    try:
        program = json.loads(text)
    except ValueError as e:
        raise InputError(f"{where}: not a readable program ({e}); recompile") from None
    schema = program.get("schema") if isinstance(program, dict) else None
    name, _, version = str(schema).partition("/")
    if name != SCHEMA_NAME or not version.isdigit():
        raise InputError(f"{where}: not a cgc wafer program (schema {schema!r}); recompile")
    if int(version) > SCHEMA_VERSION:
        raise InputError(
            f"{where}: program schema version {version} is newer than this cgc reads "
            f"({SCHEMA_VERSION}); upgrade cgc or recompile"
        )
    return program
