"""GPT models lower to ORT's fused kernels: exact ONNX op counts, numerics against eager."""

import collections

import onnx
import pytest
import torch

from cgc.backends.onnxruntime import OrtProgram, build_model, to_onnx
from cgc.driver import run_passes, trace
from cgc.models import TINY, build, example_inputs


def onnx_ops(model: onnx.ModelProto) -> dict[str, int]:
    return dict(
        collections.Counter(f"{n.domain}:{n.op_type}".lstrip(":") for n in model.graph.node)
    )


@pytest.mark.parametrize("name", ["tiny-2.7b", "tiny-2.7b-mup"])
def test_builtin_model_runs_on_fused_kernels(name: str, tmp_path) -> None:
    config = TINY[name]
    model = build(name).eval()
    inputs = example_inputs(config, batch=2, seq_len=16)
    g = run_passes(trace(model, inputs), "default")
    n = config.n_layer
    ops = onnx_ops(build_model(g))
    fused = {op: ops.get(op, 0) for op in ("com.microsoft:Attention", "LayerNormalization", "Gelu")}
    assert fused == {"com.microsoft:Attention": n, "LayerNormalization": 2 * n + 1, "Gelu": n}
    # c_attn went into Attention; the LM head, when it is the output, is FusedMatMul on N-D
    # rows (muP scales the logits after it, so there it stays a Gemm)
    head = (3 * n + 1, 0) if config.mup else (3 * n, 1)
    assert (ops["Gemm"], ops.get("com.microsoft:FusedMatMul", 0)) == head
    assert not {"Softmax", "MatMul", "Slice", "Split", "Attention", "Erf"} & set(ops)
    assert g.op_counts()["attention"] == n  # the lowering fused a copy, not the caller's graph
    to_onnx(g, tmp_path / "model.onnx")
    with torch.no_grad():
        want = model(*inputs)
    for reference in (True, False):
        (got,) = OrtProgram(tmp_path / "model.onnx", reference=reference).run(*inputs)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
