"""ONNX Runtime kernels for the Llama-family ops: the standard opset-23 ops cgc lowers to
against the com.microsoft contrib ops that compute the same, on Llama-shaped tensors.

Each contender is a one-node (or few-node) ONNX model on the same random inputs; all must agree
within 1e-5 with the first of their group (the standard op), then they run in turn, round after
round, under the same session options (ORT_ENABLE_ALL, --threads intra-op threads, CPU), and
the table gives medians and the ratio to the standard op. Batch 1, width 768, 12 query heads,
4 key-value heads of 64, SwiGLU width 2048 (bench/ort_latency.py's Llama shape).

    python bench/ort_contrib_ops.py [--seq-lens 128,512] [--ops attention,swiglu] [--rounds 50]
                                    [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

WIDTH, HEADS, KV_HEADS, D_HEAD, FFN = 768, 12, 4, 64, 2048
MS = "com.microsoft"
PAUSE = 0.02  # seconds before each timed run: ORT's worker threads spin after a run


def model(nodes: list, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> bytes:
    """A model of `nodes` reading `inputs` (graph inputs) and `weights` (initializers)."""

    def info(name: str, a: np.ndarray):
        elem = TensorProto.INT64 if a.dtype == np.int64 else TensorProto.FLOAT
        if a.dtype == np.int32:
            elem = TensorProto.INT32
        return helper.make_tensor_value_info(name, elem, list(a.shape))

    graph = helper.make_graph(
        nodes,
        "bench",
        [info(k, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    opsets = [helper.make_opsetid("", 23), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


Case = tuple[bytes, dict[str, np.ndarray]]


def rms_norm(seq: int, rng: np.random.Generator) -> dict[str, Case]:
    """The norm before each block: alone, and with the residual add it follows."""
    x = rng.standard_normal((1, seq, WIDTH), dtype=np.float32)
    r = rng.standard_normal((1, seq, WIDTH), dtype=np.float32)
    w = {"w": rng.standard_normal(WIDTH, dtype=np.float32)}
    feeds = {"x": x, "r": r}
    add = helper.make_node("Add", ["x", "r"], ["s"])
    return {
        "Add + RMSNormalization": (
            model([add, helper.make_node("RMSNormalization", ["s", "w"], ["y"], epsilon=1e-6)],
                  feeds, w),
            feeds,
        ),
        "Add + ORT SimplifiedLayerNormalization": (
            model([add, helper.make_node("SimplifiedLayerNormalization", ["s", "w"], ["y"],
                                         epsilon=1e-6)], feeds, w),
            feeds,
        ),
        "ms.SkipSimplifiedLayerNormalization": (
            model([helper.make_node("SkipSimplifiedLayerNormalization", ["x", "r", "w"], ["y"],
                                    domain=MS, epsilon=1e-6)], feeds, w),
            feeds,
        ),
    }  # fmt: skip


def rotary(seq: int, rng: np.random.Generator) -> dict[str, Case]:
    """Half rotation of the queries (all 64 features of each head)."""
    x = rng.standard_normal((1, seq, WIDTH), dtype=np.float32)
    angles = rng.standard_normal((seq, D_HEAD // 2), dtype=np.float32)
    tables = {"cos": np.cos(angles), "sin": np.sin(angles)}
    positions = np.arange(seq, dtype=np.int64)[None]
    feeds = {"x": x}
    attrs = dict(num_heads=HEADS, interleaved=0)
    return {
        "RotaryEmbedding": (
            model([helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"],
                                    rotary_embedding_dim=D_HEAD, **attrs)],
                  feeds, {**tables, "pos": positions}),
            feeds,
        ),
        "ms.RotaryEmbedding": (
            model([helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"],
                                    domain=MS, **attrs)],
                  feeds, {**tables, "pos": positions}),
            feeds,
        ),
    }  # fmt: skip


def attention(seq: int, rng: np.random.Generator) -> dict[str, Case]:
    """Causal grouped-query attention on [1, seq, heads·64] q and [1, seq, 4·64] k, v."""
    q = rng.standard_normal((1, seq, WIDTH), dtype=np.float32)
    k, v = (rng.standard_normal((1, seq, KV_HEADS * D_HEAD), dtype=np.float32) for _ in "kv")
    feeds = {"q": q, "k": k, "v": v}
    scale = D_HEAD**-0.5
    lengths = {
        "seqlens_k": np.array([seq - 1], dtype=np.int32),
        "total": np.array(seq, dtype=np.int32),
    }
    return {
        "Attention (kv_num_heads)": (
            model([helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=HEADS,
                                    kv_num_heads=KV_HEADS, is_causal=1, scale=scale)],
                  feeds, {}),
            feeds,
        ),
        "ms.GroupQueryAttention": (
            model([helper.make_node("GroupQueryAttention",
                                    ["q", "k", "v", "", "", "seqlens_k", "total"], ["y"],
                                    domain=MS, num_heads=HEADS, kv_num_heads=KV_HEADS,
                                    scale=scale)],
                  feeds, lengths),
            feeds,
        ),
    }  # fmt: skip


def swiglu(seq: int, rng: np.random.Generator) -> dict[str, Case]:
    """silu(x·w_gateᵀ)·(x·w_upᵀ) on [seq, 768] rows: two Gemms, or one on the stacked weights."""
    x = rng.standard_normal((seq, WIDTH), dtype=np.float32)
    gate, up = (rng.standard_normal((FFN, WIDTH), dtype=np.float32) * 0.05 for _ in "gu")
    feeds = {"x": x}
    silu = [
        helper.make_node("Sigmoid", ["g"], ["sg"]),
        helper.make_node("Mul", ["g", "sg"], ["a"]),
        helper.make_node("Mul", ["a", "u"], ["y"]),
    ]
    two = [
        helper.make_node("Gemm", ["x", "wg"], ["g"], transB=1),
        helper.make_node("Gemm", ["x", "wu"], ["u"], transB=1),
    ]
    stacked = [
        helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
        helper.make_node("Split", ["h", "sizes"], ["g", "u"], axis=1),
    ]
    split = {"w": np.concatenate([gate, up]), "sizes": np.array([FFN, FFN], dtype=np.int64)}
    quick = [
        helper.make_node("QuickGelu", ["g"], ["a"], domain=MS, alpha=1.0),
        helper.make_node("Mul", ["a", "u"], ["y"]),
    ]
    return {
        "2 Gemm + Sigmoid, Mul, Mul": (model(two + silu, feeds, {"wg": gate, "wu": up}), feeds),
        "stacked Gemm + Split + Sigmoid, Mul, Mul": (model(stacked + silu, feeds, split), feeds),
        "stacked Gemm + Split + ms.QuickGelu, Mul": (model(stacked + quick, feeds, split), feeds),
    }


GROUPS: dict[str, Callable[[int, np.random.Generator], dict[str, Case]]] = {
    "rms_norm": rms_norm,
    "rotary_embedding": rotary,
    "attention": attention,
    "swiglu": swiglu,
}


def session(proto: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def measure(cases: dict[str, Case], rounds: int, threads: int) -> dict[str, float]:
    """Median seconds per run of each case, after checking they agree within 1e-5."""
    runs = {}
    for name, (proto, feeds) in cases.items():
        sess = session(proto, threads)
        runs[name] = lambda s=sess, f=feeds: s.run(None, f)[0]
    outputs = {name: run() for name, run in runs.items()}
    first = next(iter(outputs.values()))
    for name, out in outputs.items():
        err = float(np.abs(out - first).max())
        if err > 1e-5 * max(1.0, float(np.abs(first).max())):
            raise SystemExit(f"{name} differs from the standard op by {err:.2e}")
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            time.sleep(PAUSE)
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="128,512", help="comma-separated [128,512]")
    parser.add_argument("--ops", default=",".join(GROUPS), help=f"[{','.join(GROUPS)}]")
    parser.add_argument("--rounds", type=int, default=50, help="timed rounds [50]")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads [2]")
    args = parser.parse_args()
    print(
        f"ORT {ort.__version__} CPU (ORT_ENABLE_ALL, {args.threads} threads); medians of "
        f"{args.rounds} interleaved rounds; ratio to the first (standard) op of each group"
    )
    print(f"{'op':<18}{'seq':>5}  {'kernel':<44}{'ms':>9}{'ratio':>8}")
    rng = np.random.default_rng(0)
    for group in args.ops.split(","):
        make = GROUPS[group]
        for seq in (int(s) for s in args.seq_lens.split(",")):
            medians = measure(make(seq, rng), args.rounds, args.threads)
            base = next(iter(medians.values()))
            for name, t in medians.items():
                print(f"{group:<18}{seq:>5}  {name:<44}{t * 1e3:>9.3f}{t / base:>8.2f}")


if __name__ == "__main__":
    main()
