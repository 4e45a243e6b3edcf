"""Decode figures of a layer-pipelined wafer program: one new token per sequence crosses every
region (the program is planned by decode_plan.py).

With a region's cycles those of one pass (the batch's tokens):

- per-token latency: the longest path from the ids entering to the logits leaving, through
  the regions' cycles and the hops of the routes between them (host transfers and sampling
  not counted); the parts of a split projection run side by side;
- period: the slowest region's cycles; a full pipeline finishes one pass per period;
- passes in flight to keep it full: ⌈latency / period⌉ (a sequence's next token waits for its
  last one's logits), sequences in flight: that times the batch, each with its own cache slots;
- tokens/s: full pipeline batch·clock/period; with the caches of k passes kept,
  batch·clock·min(k / latency, 1 / period); one pass alone batch·clock/latency;
- a prompt of P tokens streams one token per period (a token reaches a layer's attention one
  period after the previous wrote its keys and values there): latency + (P - 1)·period.
"""

from __future__ import annotations

from math import ceil
from typing import Any

from cgc.backends.cerebras.machine import get_machine
from cgc.text import count


def token_latency(program: dict[str, Any], cycles: list[int]) -> tuple[int, int]:
    """(cycles, hops) of the longest path from the ids to the logits: regions in stage order,
    each finishing its cycles after the latest of its inputs arrives over its route."""
    hop = get_machine(program["machine"]["name"]).hop_latency_cycles
    incoming: dict[int, list[tuple[int, int]]] = {r["id"]: [] for r in program["regions"]}
    for route in program["routes"]:
        for target, hops in zip(route["targets"], route["hops"], strict=True):
            incoming[target].append((route["source"], hops))
    done: dict[int, tuple[int, int]] = {}  # region -> (finish cycle, hops on its path)
    for region in sorted(program["regions"], key=lambda r: (r["stage"], r["id"])):
        start = max(
            ((done[s][0] + h * hop, done[s][1] + h) for s, h in incoming[region["id"]]),
            default=(0, 0),
        )
        done[region["id"]] = (start[0] + cycles[region["id"]], start[1])
    return max(done.values())


def estimate(program: dict[str, Any], region_cycles: list[int] | None = None) -> dict[str, Any]:
    """The decode figures of a program with a `generation` section (see the module docstring)."""
    gen = program["generation"]
    cycles = region_cycles or [r["cycles"] for r in program["regions"]]
    clock = program["machine"]["clock_hz"]
    latency, hops = token_latency(program, cycles)
    period = max(cycles)
    batch = gen["batch"]
    passes = ceil(latency / period)
    kept = min(passes, gen["cache_sequences"] // batch)
    return {
        "batch": batch,
        "capacity": gen["capacity"],
        "cache_sequences": gen["cache_sequences"],
        "cache_bytes": gen["cache_bytes"],
        "unfit_sequences": gen["unfit_sequences"],
        "latency_cycles": latency,
        "latency_hops": hops,
        "latency_us": _round(latency / clock * 1e6),
        "period_cycles": period,
        "passes_in_flight": passes,
        "sequences_in_flight": passes * batch,
        "pipeline_tokens_per_s": _round(batch * clock / period),
        "kept_tokens_per_s": _round(batch * clock * min(kept / latency, 1 / period)),
        "single_tokens_per_s": _round(batch * clock / latency),
        "prompt_tokens": gen["prompt_tokens"],
        "prompt_us": _round((latency + (gen["prompt_tokens"] - 1) * period) / clock * 1e6),
    }


def render(d: dict[str, Any]) -> str:
    """The decode figures as text, for `cgc generate` and the artifact summary."""
    lines = [
        f"decode: batch {d['batch']}, one token per sequence per pass; caches of "
        f"{count(d['cache_sequences'], 'sequence')} x {d['capacity']} slots kept "
        f"({size_text(d['cache_bytes'])})",
        f"per-token latency {d['latency_cycles']:,} cycles = {d['latency_us']:,.2f} us "
        f"(regions on the token's path + {d['latency_hops']} hops); one pass alone "
        f"{d['single_tokens_per_s']:,.0f} tokens/s",
        f"full pipeline: one pass per {d['period_cycles']:,} cycles = "
        f"{d['pipeline_tokens_per_s']:,.0f} tokens/s with {d['sequences_in_flight']} sequences "
        f"in flight ({d['passes_in_flight']} passes), each with its own cache slots",
    ]
    if d["cache_sequences"] < d["sequences_in_flight"]:
        why = (
            f"the caches of {d['unfit_sequences']} sequences do not fit"
            if d["unfit_sequences"]
            else "the plan keeps fewer"
        )
        lines.append(
            f"  {why}: with the {d['cache_sequences']} kept, {d['kept_tokens_per_s']:,.0f} tokens/s"
        )
    lines.append(f"a {d['prompt_tokens']}-token prompt streams through in {d['prompt_us']:,.2f} us")
    return "\n".join(lines)


def size_text(n: int) -> str:
    """Bytes in the largest binary unit that keeps one digit before the point."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def _round(x: float) -> float:
    return float(f"{x:.6g}")
