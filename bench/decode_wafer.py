"""Decode on the wafer: per-token latency and full-pipeline throughput of Cerebras-GPT 111M to
2.7B on WSE-2 and WSE-3, and the decode plan against decoding on a 128-token plan's regions.

    python bench/decode_wafer.py [--sizes 111m,256m,590m,1.3b,2.7b] [--precision fp16]
        [--capacities 2048,1024,512,256,128,64] [--compare 111m] [--prompt 128]

Models are built on the meta device (planning needs shapes, not weights). For every size and
target, the decode graph of the kv-cache pass (batch 1, one token per pass) is planned
layer-pipelined for the largest cache capacity C of --capacities at which the caches of every
sequence a full pipeline keeps in flight fit in SRAM with the weights
(cgc.backends.cerebras.decode_plan). The table gives, at that C: the per-token latency (the
regions' cycles on the token's path plus the routes' hops), the full-pipeline throughput (one
token per period, the slowest region's cycles), the sequences that needs in flight (each with
its own C cache slots), and one sequence's tokens/s alone. A size whose caches do not fit for a
full pipeline even at the smallest C shows the batch-1 plan at that C and what it lacks.

--compare sizes are also planned the other way: the prefill graph (--prompt tokens per pass)
planned on its own, with the same caches, and the decode kernels costed on its regions (each
decode node on the region of its prefill counterpart, hops between those regions' rectangles):
per-token latency and throughput of decode there, and a prompt's time both ways (streamed
through the decode plan: latency + (P - 1)·period; the 128-token plan's period per pass).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from tqdm import tqdm

from cgc import models
from cgc.backends.cerebras import compile as compile_wafer
from cgc.backends.cerebras import get_machine, kernel_for
from cgc.backends.cerebras.decode import estimate
from cgc.backends.cerebras.decode_plan import compile_decode
from cgc.backends.cerebras.kernels.cached_attention import CACHE_SEQUENCES
from cgc.backends.cerebras.placement import Rect
from cgc.backends.cerebras.planner import PlanError, RegionCost, Stage
from cgc.backends.cerebras.precision import BYTES
from cgc.generation import trace_step_graphs
from cgc.ir import Graph, Value

SIZES = ("111m", "256m", "590m", "1.3b", "2.7b")
TARGETS = ("wse2", "wse3")


def plan_cell(module, target: str, precision: str, capacities: list[int]):
    """The decode plan at the largest capacity whose full pipeline fits (or the smallest)."""
    for capacity in capacities:
        graphs = trace_step_graphs(module, batch=1, capacity=capacity, prompt_tokens=1)
        try:
            artifact = compile_decode(graphs.decode, {}, target=target, precision=precision)
        except PlanError:
            continue  # not even one sequence's cache fits at this capacity
        d = estimate(artifact.program)
        if d["cache_sequences"] >= d["sequences_in_flight"] or capacity == capacities[-1]:
            return capacity, artifact, d
    return None, None, None


def _producers(value: Value, machine, precision) -> list:
    """Kernel nodes whose outputs reach `value` through free ops (none for host data)."""
    node = value.producer
    if node is None:
        return []
    if not kernel_for(node, machine, precision).free:
        return [node]
    return [p for v in node.inputs for p in _producers(v, machine, precision)]


def decode_on_layout(decode: Graph, layout: dict) -> dict:
    """Latency and period of the decode kernels on the regions of another program (a prefill
    plan): each decode node on the region of its prefill namesake (or of its `.last` copy)."""
    machine = get_machine(layout["machine"]["name"])
    precision = layout["precision"]
    home: dict[str, list[dict]] = defaultdict(list)
    for region in layout["regions"]:
        for k in region["kernels"]:
            home[k["node"]].append(region)
    nodes: dict[int, list] = defaultdict(list)
    region_of: dict[int, list[int]] = {}
    for node in decode.nodes:
        if kernel_for(node, machine, precision).free:
            continue
        name = node.outputs[0].name
        regions = home.get(name) or home.get(f"{name}.last")
        if not regions:
            raise SystemExit(f"decode node %{name} has no prefill counterpart")
        for region in regions:
            nodes[region["id"]].append(node)
        region_of[id(node)] = [r["id"] for r in regions]
    by_id = {r["id"]: r for r in layout["regions"]}
    cycles = {}
    for rid, group in nodes.items():
        region = by_id[rid]
        anchor = next((n for n in group if n.op in ("linear", "embedding")), None)
        stage = Stage(region["stage"], group, region["layer"], anchor, region["parts"])
        rows, cols = region["rect"]["rows"], region["rect"]["cols"]
        cost, sram = RegionCost(stage, region["part"], machine, precision)(rows, cols)
        if sram > machine.sram_usable_bytes:
            raise SystemExit(f"decode kernels of region {rid} need {sram:,} B per PE")
        cycles[rid] = cost
    rects = {r["id"]: Rect(**r["rect"]) for r in layout["regions"]}
    incoming: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for node in decode.nodes:
        for target in region_of.get(id(node), []):
            for value in node.inputs:
                for producer in _producers(value, machine, precision):
                    for source in region_of[id(producer)]:
                        if source != target:
                            incoming[target].add((source, rects[source].gap(rects[target])))
    done = {}
    for rid in sorted(cycles, key=lambda r: (by_id[r]["stage"], r)):
        start = max((done[s] + h * machine.hop_latency_cycles for s, h in incoming[rid]), default=0)
        done[rid] = start + cycles[rid]
    return {"latency_cycles": max(done.values()), "period_cycles": max(cycles.values())}


def compare(module, size: str, target: str, precision: str, capacity: int, decoded, prompt: int):
    """Decode on its own plan against decode on the regions of a `prompt`-token plan."""
    clock = get_machine(target).clock_hz
    d = estimate(decoded.program)
    graphs = trace_step_graphs(module, batch=1, capacity=capacity, prompt_tokens=prompt)
    for node in graphs.prefill.nodes:
        if node.op == "cached_attention":
            node.meta[CACHE_SEQUENCES] = d["cache_sequences"]
    prefill = compile_wafer(
        graphs.prefill, {}, target=target, mode="pipelined", precision=precision
    ).program
    other = decode_on_layout(graphs.decode, prefill)
    prefill_period = max(r["cycles"] for r in prefill["regions"])
    rows = [
        ("decode plan (regions for 1 token)", d["latency_cycles"], d["period_cycles"]),
        (f"{prompt}-token plan's regions", other["latency_cycles"], other["period_cycles"]),
    ]
    print(
        f"\ncerebras-gpt-{size} on {target}, {precision}, C = {capacity}, caches of "
        f"{d['cache_sequences']} sequences: decode on its own plan vs on a {prompt}-token plan"
    )
    print(f"{'layout':<36} {'latency us':>10} {'period':>8} {'tokens/s full':>14} {'in flight':>9}")
    for name, latency, period in rows:
        print(
            f"{name:<36} {latency / clock * 1e6:>10.1f} {period:>8,} "
            f"{clock / period:>14,.0f} {-(-latency // period):>9}"
        )
    streamed = d["latency_cycles"] + (prompt - 1) * d["period_cycles"]
    weights = sum(
        v.type.numel * BYTES[precision] for v in graphs.decode.params.values() if v.type.is_float
    )
    reload = weights / get_machine(target).stream_bytes_per_s
    print(
        f"a {prompt}-token prompt: streamed through the decode plan {streamed / clock * 1e6:.1f} "
        f"us; on the {prompt}-token plan {prefill_period / clock * 1e6:.1f} us per pass once its "
        f"pipeline is full, but going from one plan to the other reloads the wafer: "
        f"{weights / 2**20:,.0f} MiB of weights at 150 GB/s, {reload * 1e6:,.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--capacities", default="2048,1024,512,256,128,64")
    parser.add_argument("--compare", default="111m", help="Sizes to compare layouts for ('' none).")
    parser.add_argument("--prompt", type=int, default=128)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    capacities = sorted((int(c) for c in args.capacities.split(",")), reverse=True)
    rows, compared = [], []
    cells = tqdm([(s, t) for s in sizes for t in TARGETS], desc="planning", unit="plan")
    modules = {}
    for size, target in cells:
        cells.set_postfix_str(f"{size} {target}")
        if size not in modules:
            modules[size] = models.build(f"cerebras-gpt-{size}", device="meta")
        start = time.perf_counter()
        capacity, artifact, d = plan_cell(modules[size], target, args.precision, capacities)
        rows.append((size, target, capacity, d, len(artifact.program["regions"]) if d else 0,
                     time.perf_counter() - start))  # fmt: skip
        if d and size in args.compare.split(","):
            compared.append((size, target, capacity, artifact))
    print(
        f"\ndecode, batch 1, {args.precision}; C: the largest of {capacities} at which the caches "
        "of every sequence in flight fit with the weights"
    )
    header = (
        f"{'model':<18} {'target':<6} {'C':>5} {'regions':>7} {'latency us':>10} "
        f"{'period':>7} {'tokens/s full':>14} {'in flight':>9} {'kept':>5} {'1 seq tok/s':>11} "
        f"{'plan s':>6}"
    )
    print(header)
    print("-" * len(header))
    for size, target, capacity, d, regions, seconds in rows:
        name = f"cerebras-gpt-{size}"
        if d is None:
            print(f"{name:<18} {target:<6} no decode plan fits at C = {capacities[-1]}")
            continue
        print(
            f"{name:<18} {target:<6} {capacity:>5} {regions:>7} {d['latency_us']:>10.1f} "
            f"{d['period_cycles']:>7,} {d['pipeline_tokens_per_s']:>14,.0f} "
            f"{d['sequences_in_flight']:>9} {d['cache_sequences']:>5} "
            f"{d['single_tokens_per_s']:>11,.0f} {seconds:>6.0f}"
        )
    for size, target, capacity, artifact in compared:
        compare(modules[size], size, target, args.precision, capacity, artifact, args.prompt)


if __name__ == "__main__":
    main()
