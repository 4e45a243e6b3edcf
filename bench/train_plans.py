"""Training plans for every Cerebras-GPT size on WSE-2 and WSE-3, and their cluster predictions.

    python bench/train_plans.py [--precision cb16] [--sizes 111m,13b] [--pipelined 111m,256m]

Each size trains as Cerebras-GPT did (model cards, arXiv 2304.03208): sequences of 2048 tokens,
the paper's global batch, AdamW. On a cluster of 16 systems each system takes ceil(batch / 16)
sequences per step, in micro-batches: the largest that fits the wafer, found by halving from
the whole share (one trace per micro-batch tried, meta weights). The table gives, per size and
target, the weight-streaming plan of the joint graph (autodiff's loss and gradients): the
micro-batch, tokens/s of one system, the bytes streamed per optimizer step (weights in, again
for the backward, for every micro-batch), what bounds its steps, the layers recomputed, and the
cluster model's (cgc.backends.cerebras.cluster) tokens/s and weak-scaling efficiency on 1, 4
and 16 systems, with the predicted days of the paper's run on 16 systems. A second table plans
layer-pipelined training at one sequence per step for the sizes given to --pipelined (planning
takes minutes per size) and says which fit.
"""

from __future__ import annotations

import argparse
import math
import time

from tqdm import tqdm

from cgc import driver, models
from cgc.backends.cerebras import compile as compile_wafer
from cgc.backends.cerebras.cluster import weak_scaling
from cgc.backends.cerebras.planner import PlanError
from cgc.backends.cerebras.report import estimate
from cgc.training import add_next_token_loss

SIZES = ("111m", "256m", "590m", "1.3b", "2.7b", "6.7b", "13b")
TARGETS = ("wse2", "wse3")
SEQ = 2048
# Global batch (sequences) and steps of each run: the Cerebras-GPT model cards' training table
# (13B: 720 sequences, raised to 1080 later in its run; 720 is used here).
PAPER = {
    "111m": (120, 9037),
    "256m": (264, 9468),
    "590m": (264, 21836),
    "1.3b": (528, 24334),
    "2.7b": (528, 49041),
    "6.7b": (1040, 62522),
    "13b": (720, 174335),
}
SYSTEMS = (1, 4, 16)


def joint(name: str, batch: int):
    """The joint graph (loss and gradients) of a meta-weight model at `batch` sequences."""
    module = models.build(name, device="meta")
    inputs = models.example_inputs(module.config, batch, SEQ)
    graph = driver.run_passes(driver.trace(module, inputs), "default")
    add_next_token_loss(graph)
    return driver.run_passes(graph, "autodiff")


def bound(report: dict) -> str:
    """What bounds the steps: 'compute', or the other bounds with their counts."""
    bounds = [s["bound"] for s in report["training"]["steps"]]
    other = {b: bounds.count(b) for b in bounds if b != "compute"}
    if not other:
        return "compute"
    return ", ".join(f"{b} {n}/{len(bounds)}" for b, n in other.items())


def streaming(size: str, precision: str, bar: tqdm) -> list[dict]:
    """Rows of the main table for one size (both targets)."""
    name = f"cerebras-gpt-{size}"
    batch, steps = PAPER[size]
    share = math.ceil(batch / 16)
    rows, pending, micro = [], set(TARGETS), share
    while pending and micro >= 1:
        bar.set_description(f"{name} micro-batch {micro}")
        graph = joint(name, micro)
        for target in sorted(pending):
            try:
                artifact = compile_wafer(graph.copy(), {}, target=target, mode="streaming",
                                         precision=precision)  # fmt: skip
            except PlanError:
                continue
            report = estimate(artifact.program)
            n = math.ceil(share / micro)
            scaling = weak_scaling(report, list(SYSTEMS), n)
            days = steps * scaling[-1]["step_s"] / 86400
            rows.append({"size": size, "target": target, "micro": micro, "n": n,
                         "report": report, "scaling": scaling, "days": days})  # fmt: skip
            pending.discard(target)
        micro //= 2
    for target in sorted(pending):
        rows.append({"size": size, "target": target, "report": None})
    return rows


def pipelined(size: str, precision: str) -> list[tuple[str, str, str]]:
    """(target, verdict, tokens/s) of layer-pipelined training at one sequence per step."""
    name = f"cerebras-gpt-{size}"
    graph = joint(name, 1)
    out = []
    for target in TARGETS:
        start = time.perf_counter()
        try:
            artifact = compile_wafer(graph.copy(), {}, target=target, mode="pipelined",
                                     precision=precision)  # fmt: skip
        except PlanError as e:
            out.append((target, f"does not fit: {str(e)[:90]}", "-"))
            continue
        r = estimate(artifact.program)
        seconds = time.perf_counter() - start
        out.append((target, f"fits ({len(r['regions'])} regions, planned in {seconds:.0f} s)",
                    f"{r['tokens_per_s']:,.0f}"))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="cb16")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--pipelined", default="111m,256m,590m,1.3b")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    rows = []
    with tqdm(sizes, unit="size") as bar:
        for size in bar:
            rows += streaming(size, args.precision, bar)
    print(f"\nweight-streaming training, seq {SEQ}, {args.precision}, AdamW in MemoryX")
    header = (
        f"{'model':<7} {'target':<6} {'micro':>7} {'tok/s/sys':>10} {'stream GB/step':>14} "
        f"{'bound':<22} {'recomp':>6} "
        + " ".join(f"{f'tok/s@{s}':>11} {'eff':>5}" for s in SYSTEMS)
        + f" {'run days@16':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        r = row["report"]
        if r is None:
            print(f"{row['size']:<7} {row['target']:<6} does not fit even one sequence per step")
            continue
        t = r["training"]
        stream = row["n"] * (t["weight_bytes_in"] + t["gradient_bytes_out"]) / 1e9
        cells = " ".join(
            f"{s['tokens_per_s']:>11,.0f} {s['efficiency']:>5.3f}" for s in row["scaling"]
        )
        print(
            f"{row['size']:<7} {row['target']:<6} {row['n']:>3}x{row['micro']:<3} "
            f"{row['scaling'][0]['tokens_per_s']:>10,.0f} {stream:>14.1f} {bound(r):<22} "
            f"{len(t['recomputed']):>6} {cells} {row['days']:>11.2f}"
        )
    print(
        "\nmicro: micro-batches x sequences per system and step; stream: weights in and "
        "gradients out per optimizer step; recomp: layers recomputed in their backward step"
    )
    total = {t: sum(r["days"] for r in rows if r["target"] == t and r["report"]) for t in TARGETS}
    print(
        "all seven runs on 16 systems: "
        + ", ".join(f"{t} {total[t]:.1f} days" for t in TARGETS)
        + " (Cerebras: all seven trained 'in just a few weeks' on Andromeda, 16 CS-2)"
    )
    chosen = [s for s in args.pipelined.split(",") if s in sizes]
    if chosen:
        print(f"\nlayer-pipelined training, 1 sequence of {SEQ} per step, {args.precision}, "
              "AdamW on the wafer")  # fmt: skip
        for size in tqdm(chosen, unit="size"):
            for target, verdict, tokens in pipelined(size, args.precision):
                print(f"{size:<7} {target:<6} {tokens:>12} tokens/s  {verdict}")


if __name__ == "__main__":
    main()
