"""The supported-families table: what cgc's default pipeline makes of each GPT family, reached
by tracing the PyTorch module and by importing torch.onnx.export's (dynamo) file of it.

For every model of tests/zoo/families.py (tiny configs: 2 layers, width 64, 4 heads, seeded
random weights, a left-padded attention_mask where the family takes one) and each sequence
length, one row per path: the fused op counts, any softmax / erf / tanh / cos / sin / matmul
left over, and the largest error against the reference: eager PyTorch for the traced graph (the
IR interpreter, ONNX Runtime, and the wafer simulator on fabric:64x64 where its kernels cover
the family); for the imported file, cgc's ONNX Runtime model against ONNX Runtime running the
file itself (as `cgc check` compares), and (in brackets) how far the file is from eager: the
exporter writes padding masks as 0 / finfo.min, so a fully padded query attends evenly to every
key in the file and to none in eager, and the padded rows differ.

    python bench/families.py [--seq-lens 16,64] [--families llama,mistral] [--no-onnx]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/zoo

from zoo import families  # noqa: E402

import cgc  # noqa: E402
from cgc.driver import compile_graph, run_passes, trace  # noqa: E402
from cgc.errors import CgcError  # noqa: E402
from cgc.ir import Graph, interpret  # noqa: E402

FUSED = ("attention", "rotary_embedding", "rms_norm", "swiglu", "layer_norm", "gelu", "linear")
LEFTOVERS = ("softmax", "erf", "tanh", "cos", "sin", "matmul")
SHORT = {"attention": "attn", "rotary_embedding": "rope", "layer_norm": "ln", "rms_norm": "rms"}


def counts(graph: Graph) -> tuple[str, str]:
    """The fused op counts and the leftovers of an optimised graph, as table cells."""
    c = graph.op_counts()
    fused = " ".join(f"{SHORT.get(op, op)} {c[op]}" for op in FUSED if c.get(op))
    left = " ".join(f"{op} {c[op]}" for op in LEFTOVERS if c.get(op)) or "-"
    return fused, left


def error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (torch.as_tensor(got) - want).abs().max().item()


def traced_row(model: torch.nn.Module, inputs: tuple) -> tuple[str, str, str]:
    """Counts, leftovers and errors against eager of the traced path."""
    graph = run_passes(trace(model, inputs), "default")
    with torch.no_grad():
        want = model(*inputs)
    errors = {"interp": error(interpret(graph, *inputs)[0], want)}
    errors["ort"] = error(compile_graph(graph.copy(), "onnxruntime").run(*inputs)[0], want)
    try:
        wafer = compile_graph(graph.copy(), "cerebras", target="fabric:64x64")
        errors["wafer"] = error(wafer.run(*inputs)[0], want)
    except CgcError:
        pass  # no kernel for one of the family's ops yet
    return *counts(graph), " ".join(f"{k} {v:.1e}" for k, v in errors.items())


def exported_row(model: torch.nn.Module, inputs: tuple, folder: Path) -> tuple[str, str, str]:
    """Counts, leftovers, the error against ORT on the file, and the file's against eager."""
    path = folder / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=True, verbose=False)
    graph = run_passes(cgc.load_onnx(path), "default")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    original = torch.as_tensor(session.run(None, feeds)[0])
    got = compile_graph(graph, "onnxruntime").run(*inputs)[0]
    with torch.no_grad():
        eager = model(*inputs)
    return *counts(
        graph
    ), f"ort {error(got, original):.1e} (the file vs eager {error(original, eager):.1e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="16,64", help="comma-separated [16,64]")
    parser.add_argument("--families", default=",".join(families.NAMES), help="[all]")
    parser.add_argument("--no-onnx", action="store_true", help="skip the torch.onnx.export path")
    args = parser.parse_args()
    names = args.families.split(",")
    seqs = [int(s) for s in args.seq_lens.split(",")]
    paths = ["trace"] + ([] if args.no_onnx else ["onnx"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="cgc-families-") as tmp:
        jobs = [(n, s, p) for n in names for s in seqs for p in paths]
        for name, seq, path in tqdm(jobs, desc="families", unit="model"):
            model, inputs = families.build(name, seq)
            try:
                if path == "trace":
                    cells = traced_row(model, inputs)
                else:
                    folder = Path(tmp) / f"{name}-{seq}"
                    folder.mkdir()
                    cells = exported_row(model, inputs, folder)
            except Exception as e:  # a row says what failed; the table goes on
                cells = ("FAILED", "", str(e).strip().splitlines()[0][:80])
            rows.append((name, str(seq), path, *cells))
    header = ("family", "seq", "path", "fused ops", "left over", "max abs error")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
