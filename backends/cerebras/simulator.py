"""The wafer simulator: executes a program as emitted and counts its cycles.

Nothing comes from the compiler's in-memory state: the program's values, schedule, regions,
rectangles, tilings and precision are read back, each kernel is rebuilt from its op, attributes
and operand types, and `Kernel.execute` computes the region's tiles with the tiling the program
states (refusing one that does not match the rectangle), rounding operands to the precision and
accumulating in fp32 in the kernel's chain order. The parts of a split projection run on their
own regions with their slice of the weights; their outputs are concatenated as the output
route delivers them. Route ops (reshape, slice, ...) run where the schedule puts them.

Cycles per region are the kernel library's cost model for the rectangle and tiling executed.
A training program's weight-streaming steps also re-run the forward nodes they recompute
(`recompute_cycles` per step) and free the values they drop, so a backward step that read a
value neither kept nor recomputed fails instead of reading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from cgc.backends.cerebras.kernels import Kernel, kernel_for
from cgc.backends.cerebras.machine import Machine, get_machine
from cgc.backends.cerebras.planner import part_node
from cgc.errors import InputError
from cgc.ir import Graph, TensorType, get_op

Env = dict[str, torch.Tensor]


def _machine(program: dict[str, Any]) -> Machine:
    """The program's target, checked against this cgc's model of it."""
    stated = program["machine"]
    machine = get_machine(stated["name"])
    same = (
        stated["fabric"] == [machine.fabric_width, machine.fabric_height]
        and stated["usable"]
        == {
            "x": machine.usable_x,
            "y": machine.usable_y,
            "cols": machine.usable_width,
            "rows": machine.usable_height,
        }
        and stated["sram_usable_bytes"] == machine.sram_usable_bytes
    )
    if not same:
        raise InputError(
            f"the program targets a {stated['name']} laid out differently from this cgc's "
            "model of it; recompile the program"
        )
    return machine


class Simulator:
    """A program ready to run: kernels rebuilt, weights bound, steps in schedule order."""

    def __init__(self, program: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> None:
        self.program = program
        self.machine = _machine(program)
        self.precision = program["precision"]
        self.weights = weights
        self.graph = Graph(program["graph"])
        self.region_cycles = [0] * len(program["regions"])
        self._kernel_cycles: dict[str, int] = {}
        types = {n: TensorType(tuple(t["shape"]), t["dtype"]) for n, t in program["values"].items()}
        self.input_types = [(n, types[n]) for n in program["inputs"]]
        for name, t in self.input_types:
            self.graph.add_input(name, t)
        for name in program["params"]:
            self.graph.add_param(name, types[name])
        self._values = {v.name: v for v in self.graph.values()}
        placed: dict[str, list[tuple[dict, dict]]] = {}
        for region in program["regions"]:
            for entry in region["kernels"]:
                placed.setdefault(entry["node"], []).append((region, entry))
        route_ops = {op["node"]: op for op in program["route_ops"]}
        runners: dict[str, Callable[[Env], None]] = {}
        self.steps: list[Callable[[Env], None]] = []
        # A training program's streaming steps re-run recomputed nodes at their start and
        # free the values they list at their end (the recomputation makes them again).
        streaming = {s["step"]: s for s in program["steps"] or [] if "recompute" in s}
        self.recompute_cycles = dict.fromkeys(streaming, 0)
        current = None
        for stage in program["schedule"]:
            if stage["step"] != current:
                if current in streaming:
                    self.steps.append(_dropping(streaming[current]["drop"]))
                current = stage["step"]
                for name in streaming[current]["recompute"] if current in streaming else []:
                    self.steps.append(runners[name])
                    self.recompute_cycles[current] += self._kernel_cycles.get(name, 0)
            for kind, name in stage["run"]:
                if kind == "kernel":
                    runners[name] = self._kernel_step(placed[name], types)
                else:
                    runners[name] = self._route_step(route_ops[name], types)
                self.steps.append(runners[name])
        if current in streaming:
            self.steps.append(_dropping(streaming[current]["drop"]))

    def _node(self, spec: dict[str, Any], inputs: list[str], types: dict[str, TensorType]):
        """The IR node a program entry describes, its declared output types checked."""
        node = self.graph.add_node(
            spec["op"],
            [self._values[n] for n in inputs],
            spec["attrs"],
            spec.get("meta"),
            names=spec["outputs"],
        )
        for v in node.outputs:
            if v.type != types[v.name]:
                raise InputError(
                    f"program: %{v.name} is declared {types[v.name]} but {spec['op']} gives "
                    f"{v.type}; recompile the program"
                )
            self._values[v.name] = v
        return node

    def _kernel_step(
        self, parts: list[tuple[dict, dict]], types: dict[str, TensorType]
    ) -> Callable[[Env], None]:
        """Run a kernel on its region (or each part on its own region) and bind its outputs."""
        _, first = parts[0]
        node = self._node(first, first["operands"], types)
        runs: list[tuple[Kernel, dict, dict, tuple[int, int] | None]] = []
        for region, entry in parts:
            # The tiling was chosen for the SRAM the region's other kernels leave this one.
            machine = replace(self.machine, sram_usable_bytes=entry["sram_budget"])
            if entry["features"] is None:
                kernel = kernel_for(node, machine, entry["precision"])
                features = None
            else:
                n0, n1 = entry["features"]
                kernel = kernel_for(part_node(node, n0, n1), machine, entry["precision"])
                features = (n0, n1)
            rows, cols = region["rect"]["rows"], region["rect"]["cols"]
            cycles = kernel.cycles(rows, cols)
            self.region_cycles[region["id"]] += cycles
            self._kernel_cycles[node.outputs[0].name] = (
                self._kernel_cycles.get(node.outputs[0].name, 0) + cycles
            )
            runs.append((kernel, region, entry, features))
        outputs = first["outputs"]

        slots = set(first["weight_slots"])
        streamed = [n for i, n in enumerate(first["operands"]) if i not in slots]
        resident = [n for i, n in enumerate(first["operands"]) if i in slots]

        def step(env: Env) -> None:
            results = []
            for kernel, region, entry, features in runs:
                weights = [env[n] for n in resident]
                if features is not None:
                    weights = [w[features[0] : features[1]] for w in weights]
                results.append(
                    kernel.execute(
                        [env[n] for n in streamed],
                        weights,
                        region["rect"]["rows"],
                        region["rect"]["cols"],
                        entry["tiling"],
                    )
                )
            if len(results) == 1:
                env.update(zip(outputs, results[0], strict=True))
            else:
                env[outputs[0]] = torch.cat([r[0] for r in results], dim=-1)

        return step

    def _route_step(self, spec: dict[str, Any], types: dict[str, TensorType]):
        """A free op on a route: the op's reference implementation."""
        node = self._node(spec, spec["inputs"], types)
        impl, attrs = get_op(node.op).impl, dict(node.attrs)
        inputs, outputs = spec["inputs"], spec["outputs"]

        def step(env: Env) -> None:
            result = impl(*(env[n] for n in inputs), **attrs)
            env.update(
                zip(outputs, result if isinstance(result, tuple) else (result,), strict=True)
            )

        return step

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Execute the program on `inputs` (one per program input) and return its outputs."""
        if self.weights is None:
            reason = self.program["weights"]["reason"]
            raise InputError(
                f"this program has no weights ({reason}); it can be inspected, not run"
            )
        if len(inputs) != len(self.input_types):
            raise InputError(f"the program takes {len(self.input_types)} inputs, got {len(inputs)}")
        env: Env = dict(self.weights)
        for (name, t), x in zip(self.input_types, inputs, strict=True):
            if tuple(x.shape) != t.shape or x.dtype != t.torch_dtype:
                raise InputError(f"input {name} expects {t}, got {x.dtype} {list(x.shape)}")
            env[name] = x
        with torch.no_grad():
            try:
                for step in self.steps:
                    step(env)
            except KeyError as e:
                if e.args[0] not in self._values:
                    raise
                raise InputError(
                    f"the program reads %{e.args[0]} after a step dropped it; recompile the program"
                ) from None
        return [env[n] for n in self.program["outputs"]]


def _dropping(names: list[str]) -> Callable[[Env], None]:
    """A step freeing `names` (values a later recomputation makes again)."""

    def step(env: Env) -> None:
        for name in names:
            del env[name]

    return step
