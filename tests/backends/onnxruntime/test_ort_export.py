"""Export: external data beside the model, determinism, clear errors for meta weights."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from cgc.backends.onnxruntime import OrtProgram, build_model, to_onnx
from cgc.backends.onnxruntime.lowering import tensor_proto
from cgc.errors import CgcError
from cgc.ir import interpret, parse

MLP = """\
graph @mlp(%x: f32[2,3,64]) {
  param %fc.w: f32[128,64]
  param %fc.b: f32[128]
  param %proj.w: f32[64,128]
  param %ln.w: f32[64]
  %ln = layer_norm(%x, %ln.w) {eps=1e-05} : f32[2,3,64]
  %fc = linear(%ln, %fc.w, %fc.b) : f32[2,3,128]
  %gelu = gelu(%fc) {approximate="tanh"} : f32[2,3,128]
  %proj = linear(%gelu, %proj.w) : f32[2,3,64]
  %y = add(%x, %proj) : f32[2,3,64]
  return %y
}
"""
WEIGHT_NAMES = ["fc.w", "fc.b", "proj.w", "ln.w"]


@pytest.fixture
def mlp(with_weights):
    g = with_weights(parse(MLP))
    for name in ("fc.w", "proj.w"):  # unit-variance activations, as in a trained model
        g.weights[name] /= g.weights[name].shape[1] ** 0.5
    return g


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0))


def test_weights_go_to_one_aligned_external_file(mlp, tmp_path: Path) -> None:
    path = tmp_path / "out" / "model.onnx"
    model = to_onnx(mlp, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    weights = {t.name: t for t in model.graph.initializer if t.name in mlp.params}
    assert list(weights) == WEIGHT_NAMES
    end = 0
    for name, t in weights.items():
        info = {e.key: e.value for e in t.external_data}
        assert t.data_location == TensorProto.EXTERNAL and not t.raw_data
        assert info["location"] == "model.onnx.data"
        assert int(info["offset"]) % 4096 == 0 and int(info["offset"]) >= end
        assert int(info["length"]) == mlp.params[name].type.nbytes
        end = int(info["offset"]) + int(info["length"])
    assert (path.parent / "model.onnx.data").stat().st_size == end
    assert path.stat().st_size < 4096  # the protobuf holds references, not weight bytes
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))  # reads the external data back
    got = numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == "fc.w"))
    np.testing.assert_array_equal(got, mlp.weights["fc.w"].numpy())


def test_model_runs_from_a_moved_folder(mlp, x, tmp_path: Path) -> None:
    to_onnx(mlp, tmp_path / "a" / "model.onnx")
    shutil.move(tmp_path / "a", tmp_path / "b")
    (got,) = OrtProgram(tmp_path / "b" / "model.onnx", reference=True).run(x)
    torch.testing.assert_close(got, interpret(mlp, x)[0], atol=1e-5, rtol=1e-5)


def test_inline_weights_when_asked(mlp, x, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    model = to_onnx(mlp, path, external_data=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    fc_w = next(t for t in model.graph.initializer if t.name == "fc.w")
    assert fc_w.data_location == TensorProto.DEFAULT and len(fc_w.raw_data) == 128 * 64 * 4
    (got,) = OrtProgram(path).run(x)
    torch.testing.assert_close(got, interpret(mlp, x)[0], atol=1e-5, rtol=1e-5)


def test_export_is_deterministic(mlp, tmp_path: Path) -> None:
    to_onnx(mlp, tmp_path / "a" / "model.onnx")
    to_onnx(mlp, tmp_path / "b" / "model.onnx")
    copy = mlp.copy()  # a structurally equal graph sharing the weights
    to_onnx(copy, tmp_path / "c" / "model.onnx")
    for name in ("model.onnx", "model.onnx.data"):
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_export_replaces_an_existing_model_and_leaves_no_staging(mlp, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    to_onnx(mlp, path)
    mlp.weights["fc.b"] = torch.zeros(128)
    to_onnx(mlp, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    fc_b = next(t for t in onnx.load(str(path)).graph.initializer if t.name == "fc.b")
    assert not numpy_helper.to_array(fc_b).any()


def test_meta_weights_are_a_clear_error_and_write_nothing(mlp, tmp_path: Path) -> None:
    mlp.weights["fc.w"] = torch.empty(128, 64, device="meta")
    del mlp.weights["proj.w"]
    with pytest.raises(CgcError) as e:
        to_onnx(mlp, tmp_path / "out" / "model.onnx")
    assert str(e.value) == (
        "2 of 4 parameters are meta weights (no data), e.g. %fc.w; "
        "ONNX export needs real weights: load the model with its checkpoint"
    )
    assert not (tmp_path / "out").exists()


def test_weight_of_the_wrong_type_is_an_error(mlp, tmp_path: Path) -> None:
    mlp.weights["fc.b"] = torch.zeros(127, dtype=torch.float16)
    with pytest.raises(
        CgcError, match=r"weight %fc.b is f16\[127\] but the graph declares f32\[128\]"
    ):
        to_onnx(mlp, tmp_path / "model.onnx")


def test_graph_interface_and_value_info(mlp) -> None:
    g = build_model(mlp).graph
    assert [(v.name, v.type.tensor_type.elem_type) for v in g.input] == [("x", TensorProto.FLOAT)]
    assert [d.dim_value for d in g.output[0].type.tensor_type.shape.dim] == [2, 3, 64]
    assert [v.name for v in g.value_info] == ["ln", "fc", "gelu", "proj"]
    assert [d.dim_value for d in g.value_info[1].type.tensor_type.shape.dim] == [2, 3, 128]


def test_model_header(mlp) -> None:
    model = build_model(mlp)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 23)]
    assert model.ir_version == 11
    assert model.producer_name == "cgc"


def test_half_precision_weights_round_trip(tmp_path: Path) -> None:
    g = parse(
        "graph @t(%i: i32[3]) {\n  param %t: f16[5,4]\n"
        "  %y = embedding(%t, %i) : f16[3,4]\n  return %y\n}\n"
    )
    g.weights["t"] = torch.randn(5, 4).half()
    path = tmp_path / "model.onnx"
    to_onnx(g, path)
    ids = torch.tensor([4, 0, 2], dtype=torch.int32)
    (got,) = OrtProgram(path, reference=True).run(ids)
    assert torch.equal(got, g.weights["t"][ids])


def test_bf16_tensors_keep_their_bits() -> None:
    t = torch.randn(3, 2).to(torch.bfloat16)
    proto = tensor_proto("w", t)
    assert proto.data_type == TensorProto.BFLOAT16
    back = numpy_helper.to_array(proto).astype(np.float32)
    assert torch.equal(torch.from_numpy(back), t.float())
