"""Performance estimates of a wafer program: per-region cycles, bottleneck, throughput, use.

Definitions (one pass = the program's whole input batch, `tokens` tokens):

- layer-pipelined: every region works on a different pass at once, so a pass leaves the
  pipeline every `period` = the slowest region's cycles; a *stage time* is a region's cycles;
- weight streaming: steps run one after another, so `period` = the sum of the steps' cycles
  (each step the larger of its compute and its weights' streaming, plus a broadcast); a stage
  time is a step's cycles;
- tokens/s = tokens · clock / period;
- PEs assigned = PEs in regions / usable PEs (streaming: every step has the whole wafer);
- PE utilisation = Σ region PEs · region cycles / (usable PEs · period): the busy share;
- model-FLOPs utilisation (MFU) = FLOPs of a pass (the op registry's count for the graph's
  kernels) · passes/s / the dense peak of the usable PEs in the program's precision;
- SRAM headroom = 1 - the busiest PE's bytes / usable SRAM per PE;
- a decode program (a `generation` section) adds per-token latency and decode throughput
  (decode.py).

A training program streamed by layer (a `training` section) adds to each step the forward
nodes it recomputes, takes max(compute, weights in, gradients out) per step and reports which
bounds it, and adds the iteration-boundary bubble to the period (one training step); its PEs'
bytes include their share of the activations live across the step.
"""

from __future__ import annotations

from math import prod
from statistics import mean
from typing import Any

from cgc.backends.cerebras import decode
from cgc.backends.cerebras.train_pipeline import step_cycles
from cgc.text import count


def tokens(program: dict[str, Any]) -> int:
    """Tokens in one pass: the first input's elements (ids), or its rows (features)."""
    first = program["values"][program["inputs"][0]]
    shape = first["shape"]
    if first["dtype"].startswith(("i", "u")) or not shape:
        return max(1, prod(shape))
    return max(1, prod(shape[:-1]))


def estimate(
    program: dict[str, Any],
    region_cycles: list[int] | None = None,
    recompute_cycles: dict[int, int] | None = None,
) -> dict[str, Any]:
    """The report as plain data; `region_cycles` and a training program's `recompute_cycles`
    per step override the program's (as simulated)."""
    machine = program["machine"]
    regions = program["regions"]
    cycles = region_cycles or [r["cycles"] for r in regions]
    usable = machine["usable"]["cols"] * machine["usable"]["rows"]
    clock = machine["clock_hz"]
    flops = sum(k["flops"] for r in regions for k in r["kernels"])
    training = None
    sram = max(r["sram_bytes"] for r in regions)
    if program.get("training") and program["mode"] == "streaming":
        training = _training_steps(program, cycles, recompute_cycles)
        stage_times = [s["cycles"] for s in training["steps"]]
        period = sum(stage_times) + training["bubble_cycles"]
        worst = max(range(len(stage_times)), key=stage_times.__getitem__)
        bottleneck = {"step": worst, "cycles": stage_times[worst]}
        busy = usable * (sum(cycles) + sum(s["recompute_cycles"] for s in training["steps"]))
        assigned = 1.0
        sram = training.pop("sram_bytes")
    elif program["mode"] == "pipelined":
        stage_times = cycles
        period = max(cycles)
        bottleneck = {"region": cycles.index(period), "cycles": period}
        busy = sum(r["pes"] * c for r, c in zip(regions, cycles, strict=True))
        assigned = sum(r["pes"] for r in regions) / usable
        if program.get("training"):
            training = _training_pipeline(program, cycles)
            period = training["cycles"]
    else:
        compute: dict[int, int] = {}
        for r, c in zip(regions, cycles, strict=True):
            compute[r["step"]] = compute.get(r["step"], 0) + c
        stage_times = [
            max(compute[s["step"]], s["stream_cycles"]) + s["overhead_cycles"]
            for s in program["steps"]
        ]
        period = sum(stage_times)
        worst = max(range(len(stage_times)), key=stage_times.__getitem__)
        bottleneck = {"step": worst, "cycles": stage_times[worst]}
        busy = usable * sum(cycles)
        assigned = 1.0
    passes_per_s = clock / period
    routes = program["routes"]
    hops = [h for r in routes for h in r["hops"]]
    return {
        "graph": program["graph"],
        "machine": machine["name"],
        "mode": program["mode"],
        "precision": program["precision"],
        "tokens_per_pass": tokens(program),
        "regions": [
            {
                "id": r["id"],
                "layer": r["layer"],
                "ops": [k["op"] for k in r["kernels"]],
                "pes": r["pes"],
                "cycles": c,
                "sram_bytes": r["sram_bytes"],
            }
            for r, c in zip(regions, cycles, strict=True)
        ],
        "period_cycles": period,
        "bottleneck": bottleneck,
        "mean_stage_cycles": _round(mean(stage_times)),
        "bottleneck_over_mean": _round(max(stage_times) / mean(stage_times)),
        "tokens_per_s": _round(tokens(program) * passes_per_s),
        "pes_assigned": _round(assigned),
        "pe_utilisation": _round(busy / (usable * period)),
        "flops_per_pass": flops,
        "mfu": _round(flops * passes_per_s / machine["peak_flops"]),
        "sram_headroom": _round(1 - sram / machine["sram_usable_bytes"]),
        "routes": len(routes),
        "colors": 1 + max((r["color"] for r in routes), default=-1),
        "max_hops": max(hops, default=0),
        "mean_hops": _round(mean(hops)) if hops else 0.0,
        **({"decode": decode.estimate(program, cycles)} if "generation" in program else {}),
        **({"training": training} if training is not None else {}),
    }


def _training_pipeline(program: dict[str, Any], cycles: list[int]) -> dict[str, Any]:
    """A pipelined training step (train_pipeline.step_cycles) with `cycles` per region."""
    training = program["training"]
    regions = program["regions"]
    step = step_cycles(
        cycles,
        [r["update"]["cycles"] for r in regions],
        training["sequences"],
        training["norm_cycles"],
    )
    return {
        "update": "wafer",
        "clock_hz": program["machine"]["clock_hz"],
        "optimizer": training["optimizer"],
        **step,
        "stash_bytes": sum(r["stash_bytes"] for r in regions),
        "updated_elements": sum(r["update"]["elements"] for r in regions),
    }


def _training_steps(
    program: dict[str, Any], cycles: list[int], recompute: dict[int, int] | None
) -> dict[str, Any]:
    """A training program's streaming steps with `cycles` per region: each step's time and
    bound, the iteration-boundary bubble, the traffic, and the SRAM of the busiest PE."""
    compute: dict[int, int] = {}
    sram: dict[int, int] = {}
    for r, c in zip(program["regions"], cycles, strict=True):
        compute[r["step"]] = compute.get(r["step"], 0) + c
        sram[r["step"]] = max(sram.get(r["step"], 0), r["sram_bytes"])
    steps = []
    for s in program["steps"]:
        again = s["recompute_cycles"] if recompute is None else recompute[s["step"]]
        parts = (compute[s["step"]] + again, s["stream_cycles"], s["gradient_cycles"])
        worst = max(range(3), key=parts.__getitem__)
        steps.append(
            {
                "step": s["step"],
                "layer": s["layer"],
                "direction": s["direction"],
                "compute_cycles": compute[s["step"]],
                "recompute_cycles": again,
                "cycles": parts[worst] + s["overhead_cycles"],
                "bound": ("compute", "weights in", "gradients out")[worst],
                "weight_bytes": s["weight_bytes"],
                "gradient_bytes": s["gradient_bytes"],
            }
        )
    return {
        "update": program["training"]["update"],
        "clock_hz": program["machine"]["clock_hz"],
        # MemoryX updates the first step's weights only once every gradient is in (the
        # global-norm clip needs them all), so their streaming cannot overlap the previous
        # iteration's last step (inferred from Cerebras' MemoryX description).
        "bubble_cycles": program["steps"][0]["stream_cycles"],
        "weight_bytes_in": sum(s["weight_bytes"] for s in program["steps"]),
        "gradient_bytes_out": sum(s["gradient_bytes"] for s in program["steps"]),
        "recomputed": [s["layer"] for s in program["steps"] if s["recompute"]][::-1],
        "steps": steps,
        "sram_bytes": max(sram.values()),  # a region's bytes include its live activations
    }


def _round(x: float) -> float:
    """Six significant digits: stable text in report.json across platforms."""
    return float(f"{x:.6g}")


def render(report: dict[str, Any], *, per_region: bool = True) -> str:
    """The report as text for `cgc run` and `cgc compile`."""
    r = report
    b = r["bottleneck"]
    where = f"region {b['region']}" if "region" in b else f"step {b['step']}"
    lines = [
        f"wafer: {r['machine']}, {r['mode']}, {r['precision']}; "
        f"{count(len(r['regions']), 'region')}, {r['pes_assigned']:.1%} of usable PEs assigned",
        f"period {r['period_cycles']:,} cycles (bottleneck {where}, {b['cycles']:,} cycles; "
        f"bottleneck/mean stage {r['bottleneck_over_mean']:.3f})",
        f"throughput {r['tokens_per_s']:,.0f} tokens/s ({r['tokens_per_pass']} tokens per pass); "
        f"PE utilisation {r['pe_utilisation']:.1%}; MFU {r['mfu']:.1%}; "
        f"SRAM headroom {r['sram_headroom']:.1%}",
        f"routes {r['routes']} on {r['colors']} colors, hops max {r['max_hops']} "
        f"mean {r['mean_hops']:.2f}",
    ]
    if "decode" in r:
        lines.append(decode.render(r["decode"]))
    training = r.get("training")
    if training is not None and training["update"] == "wafer":
        lines.append(
            f"training step: {training['cycles']:,} cycles = the batch through the regions "
            f"{training['flow_cycles']:,} + {training['optimizer']} update on the wafer "
            f"{training['update_cycles']:,}; stash {training['stash_bytes']:,} B, "
            f"{training['updated_elements']:,} parameters updated in place"
        )
    elif training is not None:
        bounds = [s["bound"] for s in training["steps"]]
        counts = ", ".join(f"{bounds.count(b)} {b}" for b in dict.fromkeys(bounds))
        again = ", ".join(training["recomputed"]) or "none"
        lines.append(
            f"training step: {count(len(bounds), 'step')} bound by {counts}; weights in "
            f"{training['weight_bytes_in']:,} B, gradients out {training['gradient_bytes_out']:,}"
            f" B; update in {training['update']} (bubble {training['bubble_cycles']:,} cycles);"
            f" recomputed: {again}"
        )
    if per_region and training is not None and training["update"] == "memoryx":
        lines.append(f"{'step':>4} {'layer':<6} {'direction':<9} {'cycles':>13}  bound")
        for s in training["steps"]:
            lines.append(
                f"{s['step']:>4} {s['layer']:<6} {s['direction']:<9} {s['cycles']:>13,}  "
                f"{s['bound']}"
            )
    elif per_region:
        lines.append(f"{'region':>6} {'layer':<6} {'PEs':>8} {'cycles':>11} {'SRAM B/PE':>9}  ops")
        for reg in r["regions"]:
            lines.append(
                f"{reg['id']:>6} {reg['layer']:<6} {reg['pes']:>8,} {reg['cycles']:>11,} "
                f"{reg['sram_bytes']:>9,}  {' '.join(reg['ops'])}"
            )
    return "\n".join(lines)
