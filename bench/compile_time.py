"""Compile time and peak memory of every built-in size, beside torch.onnx.export of the 111M model.

Each measurement runs in its own subprocess so peak RSS belongs to that model alone. Times are
medians over --repeat runs (machines here are shared and noisy). Sizes whose weights are built
on the meta device (1.3B and up) are traced and optimised but not written to ONNX: writing
their weights would need the weights.

    python bench/compile_time.py [--repeat 3] [--sizes 111m,13b]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = ["111m", "256m", "590m", "1.3b", "2.7b", "6.7b", "13b"]


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure_cgc(size: str, seq_len: int) -> dict:
    """Trace, passes and ONNX writing of one size, in this process."""
    import cgc
    from cgc import models
    from cgc.backends import get_backend

    name = f"cerebras-gpt-{size}"
    module = models.build(name)
    inputs = models.example_inputs(module.config, 1, seq_len)
    meta = next(module.parameters()).is_meta
    t0 = time.perf_counter()
    graph = cgc.trace(module, inputs)
    t1 = time.perf_counter()
    graph = cgc.run_passes(graph, "default")
    t2 = time.perf_counter()
    onnx_s = None
    if not meta:
        with tempfile.TemporaryDirectory() as tmp:
            get_backend("onnxruntime").compile(graph, {"model": name}).save(Path(tmp) / "a")
        onnx_s = time.perf_counter() - t2
    return {
        "trace_s": t1 - t0,
        "passes_s": t2 - t1,
        "onnx_s": onnx_s,
        "meta": meta,
        "rss_gb": _peak_rss_gb(),
    }


def measure_export(seq_len: int) -> dict:
    """torch.onnx.export of the same 111M module to a file, in this process."""
    import torch

    from cgc import models

    module = models.build("cerebras-gpt-111m")
    inputs = models.example_inputs(module.config, 1, seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        torch.onnx.export(module, inputs, str(Path(tmp) / "m.onnx"), external_data=True)
        seconds = time.perf_counter() - t0
    return {"export_s": seconds, "rss_gb": _peak_rss_gb()}


def _child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = (
            measure_export(args.seq_len)
            if args.one == "export"
            else measure_cgc(args.one, args.seq_len)
        )
        print(json.dumps(result))
        return

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:8.2f}"

    print(f"compile time, batch 1, seq {args.seq_len}, median of {args.repeat} runs")
    header = ["trace s", "passes s", "onnx s", "total s"]
    print(f"{'model':<20} " + " ".join(f"{h:>8}" for h in header) + f" {'peak RSS GB':>11}")
    cgc_111m = None
    for size in args.sizes.split(","):
        runs = [_child(["--one", size, "--seq-len", str(args.seq_len)]) for _ in range(args.repeat)]
        total = [r["trace_s"] + r["passes_s"] + (r["onnx_s"] or 0.0) for r in runs]
        med_total = statistics.median(total)
        if size == "111m":
            cgc_111m = med_total
        note = "  (meta weights: no ONNX written)" if runs[0]["meta"] else ""
        print(
            f"cerebras-gpt-{size:<7} {fmt(_median(runs, 'trace_s'))} "
            f"{fmt(_median(runs, 'passes_s'))} {fmt(_median(runs, 'onnx_s'))} "
            f"{med_total:8.2f} {max(r['rss_gb'] for r in runs):11.2f}{note}"
        )
    if cgc_111m is not None:
        runs = [
            _child(["--one", "export", "--seq-len", str(args.seq_len)]) for _ in range(args.repeat)
        ]
        export = statistics.median(r["export_s"] for r in runs)
        print(
            f"{'torch.onnx.export 111m':<20} {'':>8} {'':>8} {export:8.2f} {export:8.2f} "
            f"{max(r['rss_gb'] for r in runs):11.2f}"
        )
        print(f"cgc / torch.onnx.export (111m total): {cgc_111m / export:.2f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
