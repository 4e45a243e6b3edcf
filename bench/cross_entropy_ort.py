"""cross_entropy on ONNX Runtime (CPU): cgc's lowering (LogSoftmax, GatherElements, masked sum
over the valid count) against ORT's own SoftmaxCrossEntropyLoss kernel, on [rows, vocab] logits
with every seventh target ignored (ignore_index -100, reduction mean).

Both models run in sessions with the same options (--threads intra-op threads, CPU provider);
they alternate round after round in one process and times are medians. Each result's error
against torch's F.cross_entropy in float64 is printed too.

    python bench/cross_entropy_ort.py [--rows 256] [--vocab 50257] [--rounds 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from cgc.backends.onnxruntime import build_model
from cgc.ir import parse


def _cgc_model(rows: int, vocab: int) -> bytes:
    g = parse(
        f"graph @ce(%x: f32[{rows},{vocab}], %t: i64[{rows}]) {{\n"
        '  %loss = cross_entropy(%x, %t) {ignore_index=-100, reduction="mean"} : f32[]\n'
        "  return %loss\n}\n"
    )
    return build_model(g).SerializeToString()


def _ort_kernel_model(rows: int, vocab: int) -> bytes:
    node = helper.make_node(
        "SoftmaxCrossEntropyLoss", ["x", "t"], ["loss"], reduction="mean", ignore_index=-100
    )
    graph = helper.make_graph(
        [node],
        "sce",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, vocab]),
            helper.make_tensor_value_info("t", TensorProto.INT64, [rows]),
        ],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {
        "cgc lowering": _cgc_model(args.rows, args.vocab),
        "SoftmaxCrossEntropyLoss": _ort_kernel_model(args.rows, args.vocab),
    }
    sessions = {
        k: ort.InferenceSession(m, options, providers=["CPUExecutionProvider"])
        for k, m in sessions.items()
    }
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.rows, args.vocab, generator=gen) * 3
    t = torch.randint(0, args.vocab, (args.rows,), generator=gen)
    t[::7] = -100
    exact = F.cross_entropy(x.double(), t).item()
    feeds = {"x": x.numpy(), "t": t.numpy()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    errors = {k: abs(float(s.run(None, feeds)[0]) - exact) for k, s in sessions.items()}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    print(
        f"cross_entropy [{args.rows}, {args.vocab}], {args.threads} threads, {args.rounds} rounds"
    )
    print(f"{'':26}{'median ms':>10}{'|err| vs f64':>14}")
    for name in sessions:
        print(f"{name:26}{1000 * statistics.median(times[name]):10.1f}{errors[name]:14.2e}")
    ratio = statistics.median(times["SoftmaxCrossEntropyLoss"]) / statistics.median(
        times["cgc lowering"]
    )
    print(f"SoftmaxCrossEntropyLoss / cgc lowering: {ratio:.2f}x")


if __name__ == "__main__":
    main()
