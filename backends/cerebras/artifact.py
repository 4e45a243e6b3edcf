"""The Cerebras artifact: a wafer program, its listing, weights, estimates and map.

Files: `program.json` (the program the simulator executes), `program.txt` (its listing),
`weights.safetensors` (fp32 master weights; absent for meta weights, which the program says),
`report.json` (the estimates of report.py) and `wafer.png` (the region map), plus the common
`graph.cgc` and `manifest.json`. Running it simulates the program.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cgc.artifact import Artifact
from cgc.backends.cerebras import listing, report, wafer_map
from cgc.backends.cerebras.partition import plan
from cgc.backends.cerebras.placement import check, place, validate
from cgc.backends.cerebras.program import SCHEMA, build_program, dumps, loads
from cgc.backends.cerebras.simulator import Simulator
from cgc.errors import InputError
from cgc.ir import Graph, parse

PROGRAM = "program.json"
LISTING = "program.txt"
WEIGHTS = "weights.safetensors"
REPORT = "report.json"
MAP = "wafer.png"


class CerebrasArtifact(Artifact):
    """A graph planned, placed and emitted as a wafer program; runs in the simulator."""

    backend = "cerebras"

    def __init__(
        self,
        graph: Graph,
        info: dict[str, Any],
        program: dict[str, Any],
        weights: dict[str, torch.Tensor] | None,
    ) -> None:
        super().__init__(graph, info)
        self.program = program
        self.weights = weights
        self._simulator: Simulator | None = None

    @property
    def simulator(self) -> Simulator:
        """The simulator of the program exactly as serialised (built on first use)."""
        if self._simulator is None:
            self._simulator = Simulator(loads(dumps(self.program), PROGRAM), self.weights)
        return self._simulator

    def run(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Simulate the program on `inputs`."""
        return self.simulator.run(*inputs)

    def report(self) -> dict[str, Any]:
        """Estimates with the cycles of the kernels the simulator executes."""
        simulator = self.simulator
        return report.estimate(
            self.program, simulator.region_cycles, simulator.recompute_cycles or None
        )

    def run_report(self) -> str:
        """The simulation report `cgc run` prints."""
        return report.render(self.report())

    def summary(self) -> str:
        """The plan in a few lines, for `cgc compile`."""
        return report.render(report.estimate(self.program), per_region=False)

    def write_files(self, folder: Path, progress: Callable[[str], None]) -> None:
        progress(f"writing {PROGRAM} and {LISTING}")
        (folder / PROGRAM).write_text(dumps(self.program))
        (folder / LISTING).write_text(listing.render(self.program))
        (folder / REPORT).write_text(
            json.dumps(report.estimate(self.program), indent=1, sort_keys=True) + "\n"
        )
        if self.weights is not None:
            progress(f"writing {WEIGHTS}")
            save_file(_unshared(self.weights), str(folder / WEIGHTS))
        progress(f"drawing {MAP}")
        wafer_map.draw(self.program, folder / MAP)


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, copying those that share storage (safetensors refuses aliases)."""
    seen: set[int] = set()
    out = {}
    for name in sorted(weights):
        t = weights[name].contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _weights(graph: Graph) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The parameters' data, or None with the reason when any weight is meta or missing."""
    missing = [n for n in graph.params if n not in graph.weights or graph.weights[n].is_meta]
    if missing:
        return None, f"meta weights: {len(missing)} of {len(graph.params)} parameters have no data"
    return {n: graph.weights[n] for n in graph.params}, None


def compile(
    graph: Graph,
    info: dict[str, Any],
    *,
    target: str = "wse2",
    mode: str = "auto",
    precision: str = "fp32",
) -> CerebrasArtifact:
    """Plan (annotating `graph`), place, validate and emit `graph` for a wafer.

    In auto mode a pipelined plan the validator rejects (more routes crossing than colors)
    falls back to weight streaming.
    """
    found = plan(graph, target, precision, mode)
    placement = place(found)
    if mode == "auto" and found.mode == "pipelined" and validate(found, placement):
        found = plan(graph, target, precision, "streaming")
        placement = place(found)
    check(found, placement)
    weights, note = _weights(graph)
    program = build_program(found, placement, note)
    info = {**info, "target": target, "mode": found.mode, "precision": precision}
    return CerebrasArtifact(graph, info, program, weights)


def load(folder: Path, manifest: dict[str, Any]) -> CerebrasArtifact:
    """An artifact folder written by `CerebrasArtifact.save` (files already checked)."""
    program = loads((folder / PROGRAM).read_text(), f"{folder / PROGRAM}")
    if program["schema"] != SCHEMA:
        raise InputError(f"{folder / PROGRAM}: schema {program['schema']} is not {SCHEMA}")
    weights = None
    if program["weights"]["file"] is not None:
        try:
            weights = load_file(str(folder / program["weights"]["file"]))
        except (SafetensorError, OSError) as e:
            raise InputError(f"{folder}: unreadable weights ({e}); recompile") from None
    graph = parse((folder / "graph.cgc").read_text())
    return CerebrasArtifact(graph, manifest.get("info", {}), program, weights)
