"""The memory-bandwidth floor of a batch-1 decode step on this machine.

A one-token step of a GPT reads every weight once and reuses none of it, so its time is at
least (weight bytes) / (memory bandwidth). This measures the bandwidth two ways, with
--threads threads, on arrays far larger than the last-level cache:

- a streaming read: torch's sum of a 512 MiB fp32 array (one pass, split over the threads),
  once in torch's own allocation (4 KiB pages) and once in a numpy allocation (numpy advises
  transparent huge pages for large arrays);
- ORT's GEMV: one MatMul (and one Gemm with transB=1, as cgc lowers `linear`) of a [1, 768]
  row by a constant [768, 50257] fp32 weight, the LM head of GPT-2-sized models (154 MB):
  prepacked by ORT at session start (its default), and unpacked, read in place from a numpy
  array bound with `add_initializer` (session.disable_prepacking).

and prints GB/s and the floor for --weights-mb of weights per token (111M: 444 MB).

    python bench/decode_roofline.py [--threads 2] [--rounds 30] [--weights-mb 444]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

WIDTH, VOCAB = 768, 50257


def gemv_session(
    op: str, threads: int, weight: np.ndarray, *, packed: bool = True
) -> ort.InferenceSession:
    """One MatMul (weight [in, out]) or Gemm transB=1 (weight [out, in]) node, weight constant;
    `packed=False` binds the numpy weight itself and turns prepacking off."""
    attrs = {"transB": 1} if op == "Gemm" else {}
    w = weight if op == "MatMul" else np.ascontiguousarray(weight.T)
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)],
        "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, VOCAB])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    bound = ort.OrtValue.ortvalue_from_numpy(w)
    if not packed:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.add_initializer("w", bound)
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    session.weight = (w, bound)  # the bound buffer must outlive the session
    return session


def median_seconds(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--weights-mb", type=float, default=444.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for label, big in (
        ("torch sum, 512 MiB, 4 KiB pages", torch.rand(128 * 2**20)),
        ("torch sum, 512 MiB, huge pages", torch.from_numpy(np.ones(128 * 2**20, np.float32))),
    ):
        read = median_seconds(lambda b=big: b.sum(), args.rounds)
        results[label] = big.numel() * 4 / read
    del big
    weight = np.random.default_rng(0).standard_normal((WIDTH, VOCAB), dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((1, WIDTH), dtype=np.float32)
    want = x @ weight
    for op, packed in (("MatMul", True), ("Gemm", True), ("MatMul", False), ("Gemm", False)):
        session = gemv_session(op, args.threads, weight, packed=packed)
        got = session.run(None, {"x": x})[0]
        assert np.abs(got - want).max() < 1e-3, op
        seconds = median_seconds(lambda s=session: s.run(None, {"x": x}), args.rounds)
        label = "ORT MatMul [1,768]x[768,50257]" if op == "MatMul" else "ORT Gemm transB=1"
        label += ", prepacked" if packed else ", unpacked"
        results[label] = weight.nbytes / seconds
        results[label + " ms"] = seconds * 1e3
        del session
    print(f"{args.threads} threads, medians of {args.rounds} rounds")
    for label, value in results.items():
        if label.endswith(" ms"):
            print(f"  {label:<40} {value:8.2f} ms")
        else:
            floor = args.weights_mb * 1e6 / value * 1e3
            print(
                f"  {label:<40} {value / 1e9:8.2f} GB/s -> {args.weights_mb:.0f} MB in "
                f"{floor:.1f} ms ({1e3 / floor:.1f} tokens/s)"
            )


if __name__ == "__main__":
    main()
