"""The backward ops as cgc lowers them to ONNX Runtime, against torch autograd, per op.

Cerebras-GPT 111M shapes (d_model 768, 12 heads, d_ffn 3072, vocabulary 50257), batch 1,
causal attention, fp32, CPU. For each op, cgc's lowering of the single IR node runs in an ORT
session (ORT_ENABLE_ALL, --threads intra-op threads); torch computes the same gradient with
autograd on a graph recorded once (`torch.autograd.grad(..., retain_graph=True)`), so only
the backward kernels are timed, with the same thread count. The training forward of
attention (`attention_lse`, which also returns the log-sum-exp) is timed against torch's
SDPA forward with autograd recording.

A sample is CALLS consecutive calls; samples of the contenders alternate, each after a PAUSE
(ORT's worker threads spin for about 40 ms after a run; torch's OpenMP threads wait passively),
and the table gives medians over --rounds samples, in ms per call, and cgc / torch.

    python bench/backward_ops.py [--seq-len 128] [--rounds 20] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cgc.backends.onnxruntime import to_onnx  # noqa: E402
from cgc.ir import Graph, TensorType, get_op  # noqa: E402

D, HEADS, FFN, VOCAB = 768, 12, 3072, 50257
CALLS = 10
PAUSE = 0.1


def ort_call(graph: Graph, feeds: dict[str, torch.Tensor], threads: int, folder: Path):
    """A function running `graph` lowered by cgc in an ORT session on fixed inputs."""
    path = folder / f"{graph.name}.onnx"
    to_onnx(graph, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    arrays = {name: x.numpy() for name, x in feeds.items()}
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, arrays)


def single_op(name: str, op: str, inputs: dict[str, torch.Tensor], **attrs) -> Graph:
    """A graph of one `op` node on graph inputs named after `inputs`; outputs all results."""
    g = Graph(name)
    values = [g.add_input(n, TensorType.of(x)) for n, x in inputs.items()]
    node = g.add_node(op, values, get_op(op).complete_attrs(attrs))
    g.outputs = list(node.outputs)
    return g


def cases(seq: int, gen: torch.Generator) -> dict[str, tuple[Graph, dict, Callable[[], object]]]:
    """name -> (cgc graph, its inputs, the torch computation of the same result)."""

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    out: dict[str, tuple[Graph, dict, Callable[[], object]]] = {}

    # attention: q, k, v [1, T, 768], 12 heads, causal
    attrs = {"num_heads": HEADS, "causal": True, "scale": 1 / 8}
    q, k, v, dy = (randn(1, seq, D) for _ in range(4))
    y, lse = get_op("attention_lse").impl(q, k, v, **attrs)
    qkv = [x.clone().requires_grad_() for x in (q, k, v)]
    heads = [x.view(1, seq, HEADS, 64).transpose(1, 2) for x in qkv]

    def sdpa_forward():
        return F.scaled_dot_product_attention(*heads, is_causal=True, scale=1 / 8)

    recorded = sdpa_forward()
    dyh = dy.view(1, seq, HEADS, 64).transpose(1, 2)
    fwd_inputs = {"q": q, "k": k, "v": v}
    out["attention forward (attention_lse)"] = (
        single_op("attention_lse", "attention_lse", fwd_inputs, **attrs),
        fwd_inputs,
        sdpa_forward,
    )
    grad_inputs = {"dy": dy, "q": q, "k": k, "v": v, "y": y, "lse": lse}
    out["attention backward (attention_grad)"] = (
        single_op("attention_grad", "attention_grad", grad_inputs, **attrs),
        grad_inputs,
        lambda: torch.autograd.grad(recorded, qkv, dyh, retain_graph=True),
    )

    # layer norm over 768
    x, w, b, dn = randn(1, seq, D), 1 + randn(D, scale=0.1), randn(D, scale=0.1), randn(1, seq, D)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    normed = F.layer_norm(leaves[0], (D,), leaves[1], leaves[2], 1e-5)
    ln_inputs = {"dy": dn, "x": x, "w": w}
    out["layer_norm backward (layer_norm_grad)"] = (
        single_op("layer_norm_grad", "layer_norm_grad", ln_inputs, eps=1e-5),
        ln_inputs,
        lambda: torch.autograd.grad(normed, leaves, dn, retain_graph=True),
    )

    # gelu (erf) over the MLP's 3072
    h, dh = randn(1, seq, FFN), randn(1, seq, FFN)
    leaf = h.clone().requires_grad_()
    activated = F.gelu(leaf)
    gelu_inputs = {"dy": dh, "x": h}
    out["gelu backward (gelu_grad)"] = (
        single_op("gelu_grad", "gelu_grad", gelu_inputs, approximate="none"),
        gelu_inputs,
        lambda: torch.autograd.grad(activated, [leaf], dh, retain_graph=True),
    )

    # the tied embedding: rows of the [50257, 768] table scattered into the LM head's gradient
    ids = torch.randint(0, VOCAB, (1, seq), generator=gen)
    de, head_grad = randn(1, seq, D), randn(VOCAB, D)
    table = torch.zeros(VOCAB, D, requires_grad=True)
    looked_up = F.embedding(ids, table)
    emb_inputs = {"ids": ids, "dy": de, "acc": head_grad}
    out["tied embedding backward (embedding_grad + acc)"] = (
        single_op("embedding_grad", "embedding_grad", emb_inputs, num_rows=VOCAB),
        emb_inputs,
        lambda: torch.autograd.grad(looked_up, [table], de, retain_graph=True)[0] + head_grad,
    )
    return out


def median_ms(fn: Callable[[], object], rounds: list[float]) -> None:
    time.sleep(PAUSE)
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    rounds.append((time.perf_counter() - start) / CALLS * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (graph, feeds, torch_fn) in cases(args.seq_len, gen).items():
            cgc_fn = ort_call(graph, feeds, args.threads, Path(folder))
            for fn in (cgc_fn, torch_fn) * 3:  # warm-up
                fn()
            times: dict[str, list[float]] = {"cgc": [], "torch": []}
            for i in range(args.rounds):
                order = [("cgc", cgc_fn), ("torch", torch_fn)][:: 1 if i % 2 else -1]
                for who, fn in order:
                    median_ms(fn, times[who])
            ours, theirs = (statistics.median(times[k]) for k in ("cgc", "torch"))
            rows.append((name, ours, theirs))
            print(f"{name:48s} cgc {ours:8.3f} ms  torch {theirs:8.3f} ms  {ours / theirs:5.2f}x")
    total = [sum(r[i] for r in rows) for i in (1, 2)]
    print(
        f"{'all of the above':48s} cgc {total[0]:8.3f} ms  torch {total[1]:8.3f} ms"
        f"  {total[0] / total[1]:5.2f}x"
    )
    print(
        f"(111M shapes, batch 1, seq {args.seq_len}, {args.threads} threads, medians of"
        f" {args.rounds} samples of {CALLS} calls; numpy {np.__version__}, ORT {ort.__version__})"
    )


if __name__ == "__main__":
    main()
