"""Wafer plan quality for every Cerebras-GPT size on WSE-2 and WSE-3.

    python bench/plan_quality.py [--seq-len 128] [--precision fp32] [--sizes 111m,13b]

Models are built on the meta device (planning needs shapes, not weights) and traced once per
size. Per size and target the table gives the mode chosen, the regions, bottleneck over mean
stage time, the share of usable PEs assigned, SRAM headroom, estimated tokens/s, PE and
model-FLOPs utilisation, and the wall time of planning, placement and emission. Targets for
layer-pipelined plans: bottleneck <= 1.05 x mean, >= 90% of usable PEs; the exit status is 1
when a plan misses them.
"""

from __future__ import annotations

import argparse
import sys
import time

from cgc import driver, models
from cgc.backends.cerebras import compile as compile_wafer
from cgc.backends.cerebras.report import estimate

SIZES = ("111m", "256m", "590m", "1.3b", "2.7b", "6.7b", "13b")
MAX_BOTTLENECK_OVER_MEAN = 1.05
MIN_PES_ASSIGNED = 0.90
TARGETS = ("wse2", "wse3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--sizes", default=",".join(SIZES))
    args = parser.parse_args()
    header = (
        f"{'model':<18} {'target':<6} {'mode':<10} {'regions':>7} {'bott/mean':>9} "
        f"{'PEs used':>8} {'SRAM free':>9} {'tokens/s':>12} {'PE util':>7} {'MFU':>6} "
        f"{'trace s':>7} {'plan s':>6}"
    )
    print(f"seq {args.seq_len}, batch 1, precision {args.precision}")
    print(header)
    print("-" * len(header))
    missed = []
    for size in args.sizes.split(","):
        name = f"cerebras-gpt-{size}"
        config = models.get_config(name)
        module = models.build(name, device="meta")
        inputs = models.example_inputs(config, 1, args.seq_len)
        start = time.perf_counter()
        graph = driver.run_passes(driver.trace(module, inputs), "default")
        traced = time.perf_counter() - start
        for target in TARGETS:
            start = time.perf_counter()
            artifact = compile_wafer(
                graph, {"model": name}, target=target, precision=args.precision
            )
            planned = time.perf_counter() - start
            r = estimate(artifact.program)
            print(
                f"{name:<18} {target:<6} {r['mode']:<10} {len(r['regions']):>7} "
                f"{r['bottleneck_over_mean']:>9.3f} {r['pes_assigned']:>8.1%} "
                f"{r['sram_headroom']:>9.1%} {r['tokens_per_s']:>12,.0f} "
                f"{r['pe_utilisation']:>7.1%} {r['mfu']:>6.1%} {traced:>7.1f} {planned:>6.1f}",
                flush=True,
            )
            if r["mode"] == "pipelined" and (
                r["bottleneck_over_mean"] > MAX_BOTTLENECK_OVER_MEAN
                or r["pes_assigned"] < MIN_PES_ASSIGNED
            ):
                missed.append(f"{name} on {target}")
    targets = f"bottleneck <= {MAX_BOTTLENECK_OVER_MEAN} x mean, >= {MIN_PES_ASSIGNED:.0%} of PEs"
    if missed:
        sys.exit(f"pipelined plans missing the targets ({targets}): {', '.join(missed)}")
    print(f"every pipelined plan meets the targets ({targets})")


if __name__ == "__main__":
    main()
