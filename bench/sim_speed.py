"""Functional wafer simulation speed against eager PyTorch, measured in the same run.

    python bench/sim_speed.py [--model cerebras-gpt-111m] [--seq-len 128]
        [--target wse2] [--precision fp32] [--repeat 5] [--threads N]

Compiles the model for the wafer, then times eager PyTorch and the simulator (program as
emitted: every region's tiles, chain-ordered fp32 accumulation) on the same inputs, alternating
the two so that machine load affects both alike. Prints medians and their ratio; the target is
a simulator within 3x of eager. On a machine other jobs load, pass --threads 1: with every
core busy, PyTorch's multi-threaded kernels stall on their slowest thread, which punishes the
simulator's many medium-sized tile operations far more than eager's few large ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cgc import driver
from cgc.backends.cerebras import compile as compile_wafer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cerebras-gpt-111m")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--target", default="wse2")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads for both [torch's default]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = driver.load_model(args.model, seq_len=args.seq_len)
    inputs = loaded.example_inputs
    graph = driver.run_passes(driver.trace(loaded.module, inputs), "default")
    start = time.perf_counter()
    artifact = compile_wafer(
        graph, {"model": loaded.name}, target=args.target, precision=args.precision
    )
    compiled = time.perf_counter() - start
    with torch.no_grad():
        want = loaded.module(*inputs)
    want = want[0] if isinstance(want, tuple) else want
    got = artifact.run(*inputs)[0]  # warm-up: builds the simulator's kernels
    eager, simulated = [], []
    for _ in range(args.repeat):
        with torch.no_grad():
            start = time.perf_counter()
            loaded.module(*inputs)
            eager.append(time.perf_counter() - start)
        start = time.perf_counter()
        artifact.run(*inputs)
        simulated.append(time.perf_counter() - start)
    e, s = statistics.median(eager), statistics.median(simulated)
    error = float((got - want.reshape(got.shape)).abs().max())
    print(
        f"{loaded.name} seq {args.seq_len} on {args.target} ({args.precision}), "
        f"{len(artifact.program['regions'])} regions, compile {compiled:.1f} s, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"eager PyTorch  median {e * 1e3:9.1f} ms over {args.repeat} runs")
    print(f"wafer simulator median {s * 1e3:8.1f} ms over {args.repeat} runs")
    print(f"ratio simulator / eager: {s / e:.2f} (target <= 3); max abs error vs eager {error:.2e}")


if __name__ == "__main__":
    main()
