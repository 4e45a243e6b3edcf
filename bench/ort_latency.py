"""Inference latency on ONNX Runtime (CPU): cgc's fused ONNX against torch.onnx.export's ONNX
of the same module, and eager PyTorch, for Cerebras-GPT 111M and a Llama-shaped model.

The Llama-shaped model is a transformers LlamaConfig with seeded random weights: width 768,
12 layers, 12 query heads sharing 4 key-value heads (grouped-query attention), RoPE, RMSNorm,
a SwiGLU MLP of width 2048 and a 32000-token vocabulary (about 0.1B parameters, as 111M).

Both ONNX files run in sessions with the same options (ORT_ENABLE_ALL, --threads intra-op
threads, CPU provider); eager PyTorch runs under torch.no_grad with the same thread count.
Batch 1, seeded random weights. After a warm-up, the three run in turn, round after round, in
one process, so drifts in machine load hit all of them alike; times are medians over rounds.

A fourth contender bounds what any fusion can reach: "floor", an ONNX model that runs nothing
but the matrix products every forward pass must compute (each layer's projections, and the
vocabulary projection, as Gemm/MatMul on the same shapes), with no attention, normalisation or
activation at all. No lowering of the full model can run faster.

The runtimes must not slow each other down. ORT's worker threads keep spinning for about 40 ms
of CPU after a run, so each timed run waits PAUSE first, and the order rotates every round.
PyTorch's OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, unless set): spin-waiting
they fought ORT's threads for the cores (at seq 16, eager took 99 ms alone and 968 ms right
after an ORT run; ORT 28 ms alone and 82 ms right after eager).

    python bench/ort_latency.py [--models cerebras-gpt-111m,llama] [--seq-lens 128,512]
                                [--rounds 30] [--threads 2] [-v]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cgc  # noqa: E402
from cgc import models  # noqa: E402

WARMUP = 3
PAUSE = 0.1  # seconds before each timed run: longer than ORT's threads spin after one


def session(path: Path, threads: int, *, profile: bool = False) -> ort.InferenceSession:
    """The one set of session options every ONNX model here runs with (plus ORT's profiler)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(sess: ort.InferenceSession, ids: torch.Tensor) -> Callable[[], np.ndarray]:
    feeds = {sess.get_inputs()[0].name: ids.numpy()}
    return lambda: sess.run(None, feeds)[0]


def kernel_times(path: Path, ids: torch.Tensor, threads: int, runs: int = 5) -> str:
    """ORT's profile of the model: milliseconds per run spent in each op type, largest first."""
    sess = session(path, threads, profile=True)
    run = runner(sess, ids)
    for _ in range(runs):
        run()
    totals: dict[str, float] = {}
    for event in json.loads(Path(sess.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1e3 / runs
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return f"{sum(totals.values()):.0f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ranked)


@dataclass(frozen=True)
class Subject:
    """A model to time: a module taking token ids, and the products its forward pass needs."""

    name: str
    module: torch.nn.Module
    vocab: int
    layers: int
    projections: tuple[tuple[int, int], ...]  # each layer's (in, out) matrix products


class Logits(torch.nn.Module):
    """A Hugging Face causal LM on token ids, returning only the logits (no KV cache)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def cerebras_gpt() -> Subject:
    module = models.build("cerebras-gpt-111m").eval()
    c = module.config
    d, f = c.n_embd, c.n_inner
    return Subject(c.name, module, c.vocab_size, c.n_layer, ((d, 3 * d), (d, d), (d, f), (f, d)))


def llama() -> Subject:
    """The Llama-shaped model of the module docstring."""
    config = transformers.LlamaConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32000,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    module = Logits(transformers.LlamaForCausalLM(config)).eval()
    d, kv, f = 768, 4 * 64, 2048
    projections = ((d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d))
    return Subject("llama-768 (GQA 12/4)", module, 32000, 12, projections)


SUBJECTS: dict[str, Callable[[], Subject]] = {"cerebras-gpt-111m": cerebras_gpt, "llama": llama}


def gemm_floor(subject: Subject, seq_len: int, path: Path) -> Path:
    """An ONNX model of only the projections' matrix products (see the module docstring).

    Every product reads a graph input and is a graph output, so ORT can neither fold nor drop
    it; weights are initializers, as in the real models, so ORT prepacks them alike.
    """
    rng = np.random.default_rng(0)
    widths = sorted({k for k, _ in subject.projections})
    inputs = [
        helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [seq_len, k]) for k in widths
    ]
    nodes, weights, outputs = [], [], []

    def product(k: int, n: int, name: str, op: str = "Gemm") -> None:
        w = rng.standard_normal((k, n), dtype=np.float32) * 0.02
        weights.append(numpy_helper.from_array(w, f"{name}_w"))
        nodes.append(helper.make_node(op, [f"x{k}", f"{name}_w"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [seq_len, n]))

    for layer in range(subject.layers):
        for i, (k, n) in enumerate(subject.projections):
            product(k, n, f"p{layer}_{i}")
    product(subject.projections[0][0], subject.vocab, "lm_head", op="MatMul")
    graph = helper.make_graph(nodes, "gemm_floor", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin")
    return path


def op_types(path: Path) -> str:
    """The node counts of an ONNX file by op type, most frequent first."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def measure(
    subject: Subject, seq_len: int, rounds: int, threads: int, folder: Path, verbose: bool
) -> dict[str, list[float]]:
    """Seconds per forward pass of each contender, one entry per round, at one length."""
    module = subject.module
    ids = torch.randint(0, subject.vocab, (1, seq_len), generator=torch.Generator().manual_seed(0))
    cgc_path = cgc.compile(module, (ids,), backend="onnxruntime").save(folder / f"cgc_{seq_len}")
    cgc_path = cgc_path / "model.onnx"
    export_path = folder / f"export_{seq_len}" / "model.onnx"
    export_path.parent.mkdir()
    torch.onnx.export(module, (ids,), str(export_path), external_data=True, verbose=False)
    if verbose:
        print(f"  cgc ONNX:    {op_types(cgc_path)}")
        print(f"  export ONNX: {op_types(export_path)}")

    def eager() -> torch.Tensor:
        with torch.no_grad():
            return module(ids)

    floor_path = gemm_floor(subject, seq_len, folder / f"floor_{seq_len}" / "model.onnx")
    floor = session(floor_path, threads)
    floor_feeds = {
        i.name: np.random.default_rng(1).standard_normal(i.shape, dtype=np.float32)
        for i in floor.get_inputs()
    }
    contenders = {
        "cgc": runner(session(cgc_path, threads), ids),
        "export": runner(session(export_path, threads), ids),
        "eager": eager,
        "floor": lambda: floor.run(None, floor_feeds),
    }
    outputs = {name: torch.as_tensor(contenders[name]()) for name in ("cgc", "export", "eager")}
    for name in ("cgc", "export"):
        err = (outputs[name] - outputs["eager"]).abs().max().item()
        if err > 1e-3:
            raise SystemExit(f"{name} differs from eager by {err:.2e} at seq {seq_len}")
    for _ in range(WARMUP):
        for run in contenders.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            time.sleep(PAUSE)
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    if verbose:
        print(f"  cgc kernels:    {kernel_times(cgc_path, ids, threads)}")
        print(f"  export kernels: {kernel_times(export_path, ids, threads)}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(SUBJECTS), help=f"comma-separated [{','.join(SUBJECTS)}]"
    )
    parser.add_argument("--seq-lens", default="128,512", help="comma-separated [128,512]")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds [30]")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads [2]")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print ONNX op counts and kernel profiles"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"batch 1, ORT {ort.__version__} CPU (ORT_ENABLE_ALL, {args.threads} threads), "
        f"torch {torch.__version__}; medians of {args.rounds} interleaved rounds"
    )
    for name in args.models.split(","):
        if name not in SUBJECTS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(SUBJECTS)}")
        subject = SUBJECTS[name]()
        rows = []
        with tempfile.TemporaryDirectory(prefix="cgc-latency-") as tmp:
            for seq_len in (int(s) for s in args.seq_lens.split(",")):
                folder = Path(tmp) / str(seq_len)
                folder.mkdir()
                times = measure(subject, seq_len, args.rounds, args.threads, folder, args.verbose)
                rows.append((seq_len, times))
        print(f"\n{subject.name}")
        table(rows)


def table(rows: list[tuple[int, dict[str, list[float]]]]) -> None:
    """Medians per contender and their ratios, one row per sequence length."""
    # "per round": the median of each round's cgc/export, which a drift in machine load that
    # spans several rounds affects less than the ratio of the medians
    header = (
        "seq",
        "cgc ms",
        "export ms",
        "eager ms",
        "floor ms",
        "cgc/export",
        "cgc/eager",
        "per round",
        "floor/export",
    )
    print("".join(f"{h:>13}" for h in header))
    for seq_len, t in rows:
        median = {name: statistics.median(values) for name, values in t.items()}
        per_round = statistics.median(c / x for c, x in zip(t["cgc"], t["export"], strict=True))
        ms = [median[name] * 1e3 for name in ("cgc", "export", "eager", "floor")]
        ratios = [
            median["cgc"] / median["export"],
            median["cgc"] / median["eager"],
            per_round,
            median["floor"] / median["export"],
        ]
        print(
            f"{seq_len:>13}"
            + "".join(f"{x:>13.1f}" for x in ms)
            + "".join(f"{r:>13.3f}" for r in ratios)
        )


if __name__ == "__main__":
    main()
