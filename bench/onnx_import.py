"""Import time of an ONNX export of Cerebras-GPT 111M, beside `onnx.load` of the same file.

The model is exported once (torch.onnx.export, the default dynamo exporter, weights as external
data) to a temporary folder; then `onnx.load` (with its external data) and `cgc.load_onnx`
(validation, shape inference, constant folding, IR construction, weights as torch tensors) each
read it --repeat times. Times are medians (machines here are shared and noisy).

    python bench/onnx_import.py [--repeat 5] [--seq-len 128] [--exporter dynamo|torchscript]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from cgc import models
from cgc.frontends.onnx import load_onnx

MODEL = "cerebras-gpt-111m"


def export(folder: Path, seq_len: int, exporter: str) -> Path:
    """Write the 111M model to `folder/model.onnx` and return the path."""
    module = models.build(MODEL).eval()
    inputs = models.example_inputs(module.config, 1, seq_len)
    path = folder / "model.onnx"
    torch.onnx.export(
        module,
        inputs,
        str(path),
        dynamo=exporter == "dynamo",
        input_names=["input_ids"],
        output_names=["logits"],
        external_data=True,
    )
    return path


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cgc-bench-onnx-") as tmp:
        path = export(Path(tmp), args.seq_len, args.exporter)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
        graph = load_onnx(path)
        onnx_s = median_seconds(lambda: onnx.load(path, load_external_data=True), args.repeat)
        cgc_s = median_seconds(lambda: load_onnx(path), args.repeat)
    print(
        f"{MODEL}, seq {args.seq_len}, {args.exporter} export: {size:.0f} MiB on disk,"
        f" {len(graph.nodes)} IR nodes, {len(graph.params)} parameters;"
        f" median of {args.repeat}"
    )
    print(f"{'step':<34} {'seconds':>8}")
    print(f"{'onnx.load (with external data)':<34} {onnx_s:>8.3f}")
    print(f"{'cgc load_onnx':<34} {cgc_s:>8.3f}")
    print(f"{'ratio load_onnx / onnx.load':<34} {cgc_s / onnx_s:>8.2f}")


if __name__ == "__main__":
    main()
