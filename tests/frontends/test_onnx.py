"""load_onnx: torch.onnx.export files (dynamo and TorchScript exporters) import into IR that
matches ONNX Runtime on the original file, fuses like traced graphs, and fails clearly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from cgc import models
from cgc.errors import InputError, ModelError, UnsupportedOpError
from cgc.frontends.onnx import ir_value_name, load_onnx
from cgc.ir import interpret, verify

transformers = pytest.importorskip("transformers")

TOL = 1e-4
SEQ = 16
N_LAYER = 2


# -- models and exports ---------------------------------------------------------------------------


def _perturb(module: torch.nn.Module) -> None:
    """Non-trivial weights: GPT-2's init (zero biases, unit LayerNorm) would hide mapping bugs,
    and the dynamo exporter would merge the identical tensors into one initializer."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


class _Logits(torch.nn.Module):
    """GPT2LMHeadModel returning only logits. The all-ones attention mask keeps transformers from
    tracing its packed-sequence check (aten::diff), which the TorchScript exporter cannot export."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits


def _builtin() -> torch.nn.Module:
    module = models.build("tiny-111m").eval()
    _perturb(module)
    return module


def _hf(attn: str = "eager") -> torch.nn.Module:
    config = transformers.GPT2Config(
        n_layer=N_LAYER,
        n_embd=32,
        n_head=4,
        vocab_size=97,
        n_positions=64,
        activation_function="gelu",
        attn_implementation=attn,
        use_cache=False,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    _perturb(model)
    return _Logits(model).eval()


BUILDERS = {"tiny": _builtin, "hf": _hf, "hf-sdpa": lambda: _hf("sdpa")}
INPUT_IDS = models.example_inputs(models.get_config("tiny-111m"), 1, SEQ)[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """export(model, exporter, opset=None, dynamic=False) -> path of a cached .onnx file."""
    folder = tmp_path_factory.mktemp("onnx")
    cache: dict[tuple, Path] = {}

    def run(model: str, exporter: str, opset: int | None = None, dynamic: bool = False) -> Path:
        key = (model, exporter, opset, dynamic)
        if key not in cache:
            path = folder / f"{model}_{exporter}_{opset or 'default'}{'_dyn' * dynamic}.onnx"
            kwargs = {"opset_version": opset} if opset else {}
            if dynamic and exporter == "dynamo":
                dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}
                kwargs["dynamic_shapes"] = (dims,)
            elif dynamic:
                kwargs["dynamic_axes"] = {"input_ids": {0: "batch", 1: "seq"}}
            torch.onnx.export(
                BUILDERS[model](),
                (INPUT_IDS,),
                str(path),
                dynamo=exporter == "dynamo",
                input_names=["input_ids"],
                output_names=["logits"],
                **kwargs,
            )
            cache[key] = path
        return cache[key]

    return run


def _ort(path: Path, ids: torch.Tensor = INPUT_IDS) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input_ids": ids.numpy()})[0])


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference; equal values (infinities included) differ by 0."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.numel() == 0:
        return 0.0
    diff = torch.where(a == b, 0.0, (a.double() - b.double()).abs())
    return float(diff.max())


# -- numerics and fusion --------------------------------------------------------------------------

CASES = [
    pytest.param("tiny", "dynamo", None, id="builtin-dynamo"),
    pytest.param("tiny", "torchscript", None, id="builtin-torchscript"),
    pytest.param("hf", "dynamo", None, id="hf-dynamo"),
    pytest.param("hf", "torchscript", None, id="hf-torchscript"),
    # SDPA below opset 23: √scale on q and kᵀ, and a NaN guard after the softmax.
    pytest.param("hf-sdpa", "dynamo", None, id="hf-sdpa-dynamo"),
    # opset 17 has no Gelu op: the erf formula arrives as Div/Erf/Add/Mul primitives.
    pytest.param("tiny", "torchscript", 17, id="builtin-torchscript-opset17"),
    pytest.param("hf", "torchscript", 17, id="hf-torchscript-opset17"),
    # SDPA at opset 23 exports as the ONNX Attention op.
    pytest.param("hf-sdpa", "dynamo", 23, id="hf-sdpa-dynamo-opset23"),
]


@pytest.mark.parametrize(("model", "exporter", "opset"), CASES)
def test_import_matches_onnxruntime(export, model, exporter, opset):
    path = export(model, exporter, opset)
    graph = load_onnx(path)
    verify(graph)
    assert [v.name for v in graph.inputs] == ["input_ids"]
    assert [v.name for v in graph.outputs] == ["logits"]
    assert _max_err(interpret(graph, INPUT_IDS)[0], _ort(path)) <= TOL


@pytest.mark.parametrize(("model", "exporter", "opset"), CASES)
def test_default_pipeline_fuses_like_traced_graphs(export, model, exporter, opset):
    passes = pytest.importorskip("cgc.passes")
    graph = passes.run_passes(load_onnx(export(model, exporter, opset)), "default")
    verify(graph)
    counts = graph.op_counts()
    fused = {op: counts.get(op, 0) for op in ("attention", "gelu", "layer_norm")}
    assert fused == {"attention": N_LAYER, "gelu": N_LAYER, "layer_norm": 2 * N_LAYER + 1}


@pytest.mark.parametrize(("model", "exporter", "opset"), CASES)
def test_onnxruntime_backend_matches_original(export, model, exporter, opset):
    passes = pytest.importorskip("cgc.passes")
    ort_backend = pytest.importorskip("cgc.backends.onnxruntime.artifact")
    path = export(model, exporter, opset)
    graph = passes.run_passes(load_onnx(path), "default")
    expected = _ort(path)
    for reference in (True, False):
        out = ort_backend.compile(graph, {}, reference=reference).run(INPUT_IDS)[0]
        assert _max_err(out, expected) <= TOL


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dynamic_export_with_fixed_input_shapes(export, exporter):
    """Shape/Gather/Concat/Range arithmetic on the fixed input shape folds away at import."""
    path = export("hf", exporter, dynamic=True)
    graph = load_onnx(path, input_shapes={"input_ids": [1, SEQ]})
    assert not {"concat", "expand"} & set(graph.op_counts())
    assert _max_err(interpret(graph, INPUT_IDS)[0], _ort(path)) <= TOL
    ids = models.example_inputs(models.get_config("tiny-111m"), 2, 8, seed=3)[0]
    graph = load_onnx(path, input_shapes={"input_ids": [2, 8]})
    assert graph.outputs[0].shape == (2, 8, 97)
    assert _max_err(interpret(graph, ids)[0], _ort(path, ids)) <= TOL


def test_intermediate_values_keep_onnx_names(export):
    """Every ONNX node output of a dynamo export is an IR value of the same name and value."""
    path = export("tiny", "dynamo")
    model = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = load_onnx(path)
    produced = {v.name for node in graph.nodes for v in node.outputs}
    shared = [vi for vi in inferred.graph.value_info if ir_value_name(vi.name) in produced]
    # Everything but Split (its three parts), which become slices named after them as well.
    node_outputs = {o for node in model.graph.node for o in node.output} - {"logits"}
    assert node_outputs <= {vi.name for vi in shared}
    model.graph.output.extend(shared)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    expected = dict(zip(names, session.run(None, {"input_ids": INPUT_IDS.numpy()}), strict=True))
    seen: dict[str, torch.Tensor] = {}

    def hook(node, outs):
        for v, t in zip(node.outputs, outs, strict=True):
            seen[v.name] = t

    interpret(graph, INPUT_IDS, hook=hook)
    for vi in shared:
        got, want = seen[ir_value_name(vi.name)], torch.from_numpy(expected[vi.name])
        assert _max_err(got, want) <= TOL, vi.name


def test_scope_and_source_meta(export):
    dynamo = load_onnx(export("tiny", "dynamo"))
    embedding = next(n for n in dynamo.nodes if n.op == "embedding")
    assert embedding.meta == {
        "scope": "transformer.wte",
        "source": "tiny_dynamo_default.onnx:node_embedding",
    }
    legacy = load_onnx(export("tiny", "torchscript"))
    softmax = next(n for n in legacy.nodes if n.op == "softmax")
    # The TorchScript exporter names scopes by called modules; the ModuleDict `transformer`
    # is never called, so it is missing from its paths.
    assert softmax.meta == {
        "scope": "h.0.attn",
        "source": "tiny_torchscript_default.onnx:/h.0/attn/Softmax",
    }
    assert softmax.output.name == "h.0_attn_Softmax_output_0"


def test_ops_on_weights_are_not_folded(export):
    """Constant position ids still look up the position table; weights keep their names."""
    graph = load_onnx(export("hf", "torchscript"))
    tables = [n.inputs[0].name for n in graph.nodes if n.op == "embedding"]
    assert tables == ["model.transformer.wte.weight", "model.transformer.wpe.weight"]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_trainable_initializers_are_the_model_weights(export, exporter):
    """Trainable: the dynamo exporter's PARAMETER initializers, or (TorchScript) every float
    initializer it did not make itself; the exporter's transposed copy of the tied LM head
    becomes a transpose of the one weight; masks and folded rows stay fixed."""
    graph = load_onnx(export("hf", exporter))
    names = {f"model.{n}" for n, _ in _hf().model.named_parameters()}  # wte once (tied)
    if exporter == "dynamo":  # its optimizer folded wpe's rows for the static positions
        names = names - {"model.transformer.wpe.weight", "model.transformer.wte.weight"}
        names.add("model.lm_head.weight")  # the tied table under the head's name
    assert graph.trainable == names
    transposed = [
        n.inputs[0].name for n in graph.nodes if n.op == "transpose" and not n.inputs[0].producer
    ]
    assert transposed == [
        "model.lm_head.weight" if exporter == "dynamo" else "model.transformer.wte.weight"
    ]


# -- single ops -----------------------------------------------------------------------------------


def _single_op_model(
    path: Path,
    node: onnx.NodeProto,
    inputs: dict[str, np.ndarray],
    initializers: dict[str, np.ndarray],
    opset: int = 20,
) -> Path:
    """A one-node model whose runtime inputs are `inputs` and constants `initializers`."""
    graph = helper.make_graph(
        [node],
        "single",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
            for name, x in inputs.items()
        ],
        [helper.make_empty_tensor_value_info(name) for name in node.output],
        [onnx.numpy_helper.from_array(x, name) for name, x in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, path)
    return path


_rng = np.random.default_rng(0)
_X = _rng.standard_normal((2, 3, 4)).astype(np.float32)
_i64 = np.array

SINGLE_OPS = {
    "gemm-trans-alpha-beta": (
        helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0),
        {"a": _rng.standard_normal((3, 2)).astype(np.float32)},
        {
            "b": _rng.standard_normal((5, 3)).astype(np.float32),
            "c": _rng.standard_normal(5).astype(np.float32),
        },
    ),
    "matmul-vector": (
        helper.make_node("MatMul", ["x", "v"], ["y"]),
        {"x": _X},
        {"v": _rng.standard_normal(4).astype(np.float32)},
    ),
    "slice-negative-clamped": (
        helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"]),
        {"x": _X},
        {"s": _i64([-3, 1]), "e": _i64([2**62, 100]), "a": _i64([2, 1]), "st": _i64([2, 1])},
    ),
    "split-uneven": (
        helper.make_node("Split", ["x"], ["y", "z"], axis=2, num_outputs=2),
        {"x": _rng.standard_normal((2, 3, 5)).astype(np.float32)},
        {},
    ),
    "gather-scalar": (
        helper.make_node("Gather", ["x", "i"], ["y"], axis=1),
        {"x": _X},
        {"i": _i64(-1)},
    ),
    "gather-embedding": (
        helper.make_node("Gather", ["t", "ids"], ["y"]),
        {"ids": _i64([[0, 4, 2]])},
        {"t": _rng.standard_normal((5, 3)).astype(np.float32)},
    ),
    "expand-both-ways": (
        helper.make_node("Expand", ["x", "s"], ["y"]),
        {"x": _rng.standard_normal((3, 1)).astype(np.float32)},
        {"s": _i64([2, 1, 4])},
    ),
    "reshape-zero-minus-one": (
        helper.make_node("Reshape", ["x", "s"], ["y"]),
        {"x": _X},
        {"s": _i64([0, -1])},
    ),
    "unsqueeze-squeeze": (
        helper.make_node("Unsqueeze", ["x", "a"], ["y"]),
        {"x": _X},
        {"a": _i64([0, -1])},
    ),
    "squeeze-all": (
        helper.make_node("Squeeze", ["x"], ["y"]),
        {"x": _rng.standard_normal((1, 3, 1)).astype(np.float32)},
        {},
    ),
    "flatten": (helper.make_node("Flatten", ["x"], ["y"], axis=2), {"x": _X}, {}),
    "reduce-sum-axes-input": (
        helper.make_node("ReduceSum", ["x", "a"], ["y"], keepdims=0),
        {"x": _X},
        {"a": _i64([0, -1])},
    ),
    "reduce-max-all": (helper.make_node("ReduceMax", ["x"], ["y"]), {"x": _X}, {}),
    "pow-int-exponent": (
        helper.make_node("Pow", ["x", "p"], ["y"]),
        {"x": _X},
        {"p": _i64(2)},
    ),
    "max-variadic": (
        helper.make_node("Max", ["x", "c", "d"], ["y"]),
        {"x": _X},
        {"c": np.array([0.1], np.float32), "d": _rng.standard_normal(4).astype(np.float32)},
    ),
    "where-scalar-branch": (
        helper.make_node("Where", ["m", "x", "c"], ["y"]),
        {"m": _X > 0, "x": _X},
        {"c": np.array([[-1.0]], np.float32)},
    ),
    "cast-bool": (helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BOOL), {"x": _X}, {}),
    "isnan": (helper.make_node("IsNaN", ["x"], ["y"]), {"x": _X}, {}),
    "layer-norm-no-bias": (
        helper.make_node("LayerNormalization", ["x", "w"], ["y"], epsilon=1e-3),
        {"x": _X},
        {"w": _rng.standard_normal(4).astype(np.float32)},
    ),
    "gelu-tanh": (helper.make_node("Gelu", ["x"], ["y"], approximate="tanh"), {"x": _X}, {}),
    "attention-3d-causal": (
        helper.make_node(
            "Attention", ["q", "k", "v"], ["y"], q_num_heads=2, kv_num_heads=2, is_causal=1
        ),
        {n: _rng.standard_normal((1, 5, 8)).astype(np.float32) for n in "qkv"},
        {},
    ),
    "attention-4d-bool-mask": (
        helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], scale=0.5),
        {n: _rng.standard_normal((1, 2, 5, 4)).astype(np.float32) for n in "qkv"},
        {"m": np.tril(np.ones((5, 5), bool))},
    ),
    "attention-grouped-query": (
        helper.make_node(
            "Attention", ["q", "k", "v"], ["y"], q_num_heads=4, kv_num_heads=2, is_causal=1
        ),
        {
            "q": _rng.standard_normal((1, 5, 16)).astype(np.float32),
            "k": _rng.standard_normal((1, 5, 8)).astype(np.float32),
            "v": _rng.standard_normal((1, 5, 8)).astype(np.float32),
        },
        {},
    ),
    "rms-norm": (
        helper.make_node("RMSNormalization", ["x", "w"], ["y"], epsilon=1e-3),
        {"x": _X},
        {"w": _rng.standard_normal(4).astype(np.float32)},
    ),
    "cos": (helper.make_node("Cos", ["x"], ["y"]), {"x": _X}, {}),
    "sin": (helper.make_node("Sin", ["x"], ["y"]), {"x": _X}, {}),
    "cumsum": (helper.make_node("CumSum", ["x", "a"], ["y"]), {"x": _X}, {"a": _i64(1)}),
    "gather-nd-rows-in-order": (  # Hugging Face's mask builders: every element, in order
        helper.make_node("GatherND", ["x", "i"], ["y"]),
        {"x": _X[0]},
        {"i": np.stack(np.meshgrid(np.arange(3), np.arange(4), indexing="ij"), -1)},
    ),
    "gather-nd-rows": (
        helper.make_node("GatherND", ["x", "i"], ["y"]),
        {"x": _X},
        {"i": _i64([[[1, 2], [0, 0]]])},
    ),
}


@pytest.mark.parametrize("case", SINGLE_OPS)
def test_single_op_matches_onnxruntime(tmp_path, case):
    node, inputs, initializers = SINGLE_OPS[case]
    opset = 23 if node.op_type in ("Attention", "RMSNormalization") else 20
    path = _single_op_model(tmp_path / "m.onnx", node, inputs, initializers, opset)
    graph = load_onnx(path)
    verify(graph)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)
    got = interpret(graph, *(torch.from_numpy(x) for x in inputs.values()))
    for g, e in zip(got, expected, strict=True):
        assert _max_err(g, torch.from_numpy(e)) <= TOL


def test_gemm_ir_text(tmp_path):
    """Gemm with transB is x @ wᵀ + b, the form linear fusion matches; names come from ONNX."""
    node = helper.make_node(
        "Gemm", ["x", "fc.weight", "fc.bias"], ["/fc/Gemm_output_0"], name="/fc/Gemm", transB=1
    )
    weights = {"fc.weight": np.ones((3, 2), np.float32), "fc.bias": np.zeros(3, np.float32)}
    path = _single_op_model(tmp_path / "fc.onnx", node, {"x": np.ones((4, 2), np.float32)}, weights)
    src = 'source="fc.onnx:/fc/Gemm"'
    assert str(load_onnx(path)) == (
        "graph @fc(%x: f32[4,2]) {\n"
        "  param trainable %fc.weight: f32[3,2]\n"
        "  param trainable %fc.bias: f32[3]\n"
        "  %fc_Gemm_output_0.transpose = transpose(%fc.weight) {perm=[1, 0]} : f32[2,3]"
        f' #{{scope="fc", {src}}}\n'
        "  %fc_Gemm_output_0.matmul = matmul(%x, %fc_Gemm_output_0.transpose) : f32[4,3]"
        f' #{{scope="fc", {src}}}\n'
        "  %fc_Gemm_output_0 = add(%fc_Gemm_output_0.matmul, %fc.bias) : f32[4,3]"
        f' #{{scope="fc", {src}}}\n'
        "  return %fc_Gemm_output_0\n"
        "}\n"
    )


# -- errors ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}/nope.onnx: no such file")):
        load_onnx(tmp_path / "nope.onnx")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError) as e:
        load_onnx(path)
    assert str(e.value) == f"{path}: the file is empty, not an ONNX model; export it again"


@pytest.mark.parametrize("content", ["truncated", "text"])
def test_truncated_or_foreign_file(export, tmp_path, content):
    path = tmp_path / "bad.onnx"
    data = export("tiny", "torchscript").read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else b"hello, not onnx\n")
    with pytest.raises(ModelError) as e:
        load_onnx(path)
    assert str(e.value) == f"{path}: not an ONNX model, or a truncated one; export it again"


def test_missing_external_data(export, tmp_path):
    source = export("tiny", "dynamo")
    path = tmp_path / source.name
    shutil.copy(source, path)  # without its .data file
    first = next(
        t.name
        for t in onnx.load(source, load_external_data=False).graph.initializer
        if onnx.external_data_helper.uses_external_data(t)
    )
    with pytest.raises(InputError) as e:
        load_onnx(path)
    assert str(e.value) == (
        f"{path}: external data file '{source.name}.data' (weights of '{first}') is"
        f" missing; put it next to the model, at {tmp_path / (source.name + '.data')}"
    )


def test_unsupported_ops_are_named_with_their_node(tmp_path):
    x = {"x": _X}
    suffix = (
        " in m.onnx; cgc imports the ops listed in cgc/frontends/onnx_ops.py, and any op whose"
        " inputs are constants"
    )
    tan = helper.make_node("Tan", ["x"], ["y"], name="bar")
    with pytest.raises(UnsupportedOpError) as e:
        load_onnx(_single_op_model(tmp_path / "m.onnx", tan, x, {}))
    assert str(e.value) == "unsupported ONNX op 'Tan' at node 'bar'" + suffix
    foo = helper.make_node("Foo", ["x"], ["y"], name="bar")
    with pytest.raises(UnsupportedOpError) as e:
        load_onnx(_single_op_model(tmp_path / "m.onnx", foo, x, {}))
    assert str(e.value) == "unsupported ONNX op 'Foo' at node 'bar'" + suffix
    custom = helper.make_node("FusedMatMul", ["x"], ["y"], name="baz", domain="com.microsoft")
    with pytest.raises(UnsupportedOpError) as e:
        load_onnx(_single_op_model(tmp_path / "m.onnx", custom, x, {}))
    assert str(e.value) == "unsupported ONNX op 'com.microsoft.FusedMatMul' at node 'baz'" + suffix


def test_unsupported_use_of_a_supported_op(tmp_path):
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="r")
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("s", TensorProto.INT64, [2]),
        ],
        [helper.make_empty_tensor_value_info("y")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    with pytest.raises(UnsupportedOpError) as e:
        load_onnx(path)
    assert str(e.value) == (
        "ONNX op 'Reshape' at node 'r': its target shape (input 1) is computed at run time,"
        " not constant"
    )


def test_dynamic_dimensions_need_fixed_sizes(export):
    path = export("tiny", "dynamo", dynamic=True)
    with pytest.raises(InputError) as e:
        load_onnx(path)
    assert str(e.value) == (
        f"input 'input_ids' of {path.name} has dynamic dimension(s) 0 (batch), 1 (seq);"
        " cgc compiles static shapes, so give fixed sizes: input_shapes={'input_ids': [1, 128]}"
        " in Python, or --input-shape input_ids=1x128 on the command line"
    )


def test_bad_input_shapes(export):
    dynamic = export("tiny", "dynamo", dynamic=True)
    with pytest.raises(InputError) as e:
        load_onnx(dynamic, input_shapes={"ids": [1, 8]})
    assert str(e.value) == (
        f"input_shapes names ids, but the inputs of {dynamic.name} are input_ids"
    )
    with pytest.raises(InputError) as e:
        load_onnx(dynamic, input_shapes={"input_ids": [8]})
    assert str(e.value) == (
        "input_shapes['input_ids'] = [8] has 1 dimensions; the model declares 2: ['batch', 'seq']"
    )
    static = export("tiny", "dynamo")
    with pytest.raises(InputError) as e:
        load_onnx(static, input_shapes={"input_ids": [1, 8]})
    assert str(e.value) == (
        "input_shapes['input_ids'] = [1, 8]: dimension 1 is fixed to 16 in the model"
    )


def test_old_opset(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    path = _single_op_model(tmp_path / "old.onnx", node, {"x": _X}, {}, opset=13)
    with pytest.raises(ModelError) as e:
        load_onnx(path)
    assert str(e.value) == (
        f"{path}: uses ONNX opset 13; cgc reads opset 17 and newer: export with"
        " opset_version=17 or later"
    )


def test_inconsistent_shapes(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    with pytest.raises(ModelError) as e:
        load_onnx(path)
    assert str(e.value) == (
        f"{path}: ONNX shape inference failed: [ShapeInferenceError] Inference error(s):"
        " (op_type:Relu, node name: r): [ShapeInferenceError] Inferred shape and existing shape"
        " differ in dimension 0: (2) vs (3)"
    )
