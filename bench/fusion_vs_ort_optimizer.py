"""Attention fusion on a torch.onnx.export'd GPT-2 (111M shape): ONNX Runtime's transformer
optimizer and onnxscript's optimize_for_ort against cgc (load_onnx + the default pipeline).

The model is transformers' GPT2LMHeadModel with n_layer=10, n_embd=768, n_head=12 and exact
GELU, seeded random weights, exported by torch.onnx.export (the dynamo exporter, weights as
external data) at batch 1. For each tool the script prints how many of the 10 attention blocks
became one fused op, and whether the result loads and runs in ONNX Runtime, matching ORT on
the exported file; an exception from a tool is reported in one line.

    python bench/fusion_vs_ort_optimizer.py [--seq-len 128]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers

import cgc
from cgc.driver import compile_graph

N_LAYER = 10
FUSED_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"}


class Logits(torch.nn.Module):
    """GPT2LMHeadModel returning only its logits, without a KV cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def export(folder: Path, seq_len: int) -> tuple[Path, np.ndarray]:
    """The exported model's path and seeded token ids for it."""
    config = transformers.GPT2Config(
        n_layer=N_LAYER, n_embd=768, n_head=12, activation_function="gelu"
    )
    torch.manual_seed(0)
    model = Logits(transformers.GPT2LMHeadModel(config)).eval()
    ids = torch.randint(0, config.vocab_size, (1, seq_len), generator=torch.Generator())
    path = folder / "gpt2.onnx"
    torch.onnx.export(
        model, (ids,), str(path), input_names=["input_ids"], external_data=True, verbose=False
    )
    return path, ids.numpy()


def attention_ops(model: onnx.ModelProto) -> int:
    """Fused attention nodes (standard or com.microsoft) in a model."""
    return sum(n.op_type in FUSED_ATTENTION for n in model.graph.node)


def run_ort(model: str | Path | bytes, ids: np.ndarray) -> np.ndarray:
    """Logits from a plain ORT CPU session on the model."""
    session = ort.InferenceSession(
        str(model) if isinstance(model, Path) else model, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: ids})[0]


def one_line(error: BaseException) -> str:
    """An exception as `Type: first line (file:line)`, where it was raised."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message[:160]}{where}"


def ort_transformers(path: Path, model_type: str) -> Callable[[Path], tuple[int, Path]]:
    """onnxruntime.transformers.optimizer.optimize_model with `model_type`."""

    def run(out: Path) -> tuple[int, Path]:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(str(path), model_type=model_type, num_heads=12, hidden_size=768)
        optimized.save_model_to_file(str(out), use_external_data_format=True)
        return attention_ops(optimized.model), out

    return run


def onnxscript_for_ort(path: Path) -> Callable[[Path], tuple[int, Path]]:
    """onnxscript's optimize_for_ort on the exported model."""

    def run(out: Path) -> tuple[int, Path]:
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        model, _ = optimize_for_ort(ir.load(str(path)))
        ir.save(model, str(out), external_data=out.name + ".data")
        return attention_ops(onnx.load(str(out), load_external_data=False)), out

    return run


def cgc_default(path: Path) -> Callable[[Path], tuple[int, Path]]:
    """cgc.load_onnx, the default pipeline, and cgc's ONNX Runtime lowering."""

    def run(out: Path) -> tuple[int, Path]:
        graph = cgc.run_passes(cgc.load_onnx(path), "default")
        compile_graph(graph, "onnxruntime").save(out)
        return graph.op_counts().get("attention", 0), out / "model.onnx"

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128, help="exported sequence length [128]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cgc-fusion-") as tmp:
        folder = Path(tmp)
        path, ids = export(folder, args.seq_len)
        want = run_ort(path, ids)
        exported = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        print(
            f"GPT-2 {N_LAYER} layers x 768 (12 heads), torch {torch.__version__} "
            f"torch.onnx.export at seq {args.seq_len}: {sum(exported.values())} nodes, "
            f"Softmax {exported['Softmax']}, fused attention {attention_ops(onnx.load(path))}"
        )
        tools = {
            'ORT optimizer (model_type="bert")': ort_transformers(path, "bert"),
            'ORT optimizer (model_type="gpt2")': ort_transformers(path, "gpt2"),
            "onnxscript optimize_for_ort": onnxscript_for_ort(path),
            "cgc load_onnx + default pipeline": cgc_default(path),
        }
        print(f"{'tool':<36} {'attention fused':>15}  result in ONNX Runtime")
        for i, (name, tool) in enumerate(tools.items()):
            try:
                fused, model_path = tool(folder / f"out{i}.onnx")
            except Exception as e:
                print(f"{name:<36} {'-':>15}  the tool failed: {one_line(e)}")
                continue
            try:
                err = float(np.abs(run_ort(model_path, ids) - want).max())
                runs = f"runs, max |diff| vs the export {err:.1e}"
            except Exception as e:
                runs = f"does not run: {one_line(e)}"
            print(f"{name:<36} {f'{fused} of {N_LAYER}':>15}  {runs}")


if __name__ == "__main__":
    main()
