"""`cgc train --systems N` against one process: the loss of every step and the wall time per step.

Runs `python -m cgc train MODEL --data DATA --steps S --batch B` with --systems 1 and with
--systems N (same global batch), alternately for --rounds rounds (the machine is shared: a
change in load hits both alike), and prints, per step, the largest relative difference of the
loss between the two, and per configuration the median wall time of a step (rank 0's, from
metrics.jsonl, the first step left out) and of the whole command (start-up, compilation and
validation included). On --backend cerebras the wall time is the simulator's, and the simulated
tokens/s follow: one system's on its share and, with N systems, the cluster model's.

    python bench/data_parallel.py [--model tiny-111m] [--data stdlib] [--steps 40] [--batch 2]
                                  [--seq-len 63] [--systems 2] [--rounds 2]
                                  [--backend onnxruntime|interpreter|cerebras] [--target T]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: argparse.Namespace, systems: int, folder: Path) -> tuple[list[dict], float]:
    """One `cgc train`; its metrics records and the command's wall time."""
    command = [
        sys.executable, "-m", "cgc", "train", args.model, "--data", args.data, "--steps",
        str(args.steps), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
        "--systems", str(systems), "--backend", args.backend,
        *(["--target", args.target] if args.target else []),
        "--save-every", str(args.steps), "--val-every", str(args.steps), "-q", "-o", str(folder),
    ]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - began
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-111m")
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=63)  # tiny-111m: 64 positions
    parser.add_argument("--systems", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--target", help="the cerebras backend's wafer, e.g. fabric:32x32")
    args = parser.parse_args()
    configs = (1, args.systems)
    steps: dict[int, list[float]] = {n: [] for n in configs}
    walls: dict[int, list[float]] = {n: [] for n in configs}
    losses: dict[int, list[float]] = {}
    wafer: dict[int, dict] = {}
    worst = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for n in configs:
                records, wall = run(args, n, Path(scratch) / f"r{r}-n{n}")
                tokens = args.batch * args.seq_len
                steps[n] += [tokens / r["tokens_per_s"] for r in records[1:]]
                walls[n].append(wall)
                got = [r["loss"] for r in records]
                if n in losses:
                    assert losses[n] == got, "a configuration gave other losses on a rerun"
                losses[n] = got
                wafer[n] = {k: v for k, v in records[-1].items() if k.startswith("wafer_")}
            one, many = losses[1], losses[args.systems]
            worst = max(worst, max(abs(a - b) / abs(a) for a, b in zip(one, many, strict=True)))
    print(f"{args.model}, --data {args.data}, --backend {args.backend}"
          f"{f' --target {args.target}' if args.target else ''}, {args.steps} steps, global batch "
          f"{args.batch} x {args.seq_len}, {args.rounds} rounds")  # fmt: skip
    print(f"loss, every step: largest relative difference 1 vs {args.systems} systems: {worst:.2e}")
    print(f"{'processes':>9}  {'step (median s)':>15}  {'command (median s)':>18}")
    for n in configs:
        step, wall = statistics.median(steps[n]), statistics.median(walls[n])
        print(f"{n:>9}  {step:>15.3f}  {wall:>18.1f}")
    for n in configs:
        if wafer[n]:
            simulated = ", ".join(f"{k} {v:,.0f}" for k, v in wafer[n].items())
            print(f"simulated, {n} system{'s' if n > 1 else ''}: {simulated}")


if __name__ == "__main__":
    main()
