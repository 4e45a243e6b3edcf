"""The ONNX frontend: an .onnx file (opset 17+, weights inline or as external data) -> cgc IR.

The protobuf is read without its external data, and shape inference sees large initializers
only as types, so models over 2 GB import; each external weight is read once, straight into the
array its parameter shares.
Input shapes are fixed (the IR is static), every node whose inputs are all constants is
evaluated at import, and the rest go through the op table in `onnx_ops`. IR values keep the
ONNX value names (`ir_value_name`) so intermediates can be compared with the original model.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, external_data_helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from cgc.errors import InputError, IRError, ModelError, UnsupportedOpError, first_line
from cgc.frontends.onnx_ops import (
    CONVERTERS,
    NUMPY_DTYPES,
    ONNX_DTYPES,
    OnnxNode,
    Operand,
    numpy_dtype,
)
from cgc.ir import Graph, TensorType, Value, verify

MIN_OPSET = 17
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_INFER_KEEP = 1024  # initializers up to this many elements stay in the shape-inference copy


def load_onnx(
    path: str | Path, *, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> Graph:
    """Import an ONNX model; `input_shapes` fixes dynamic input dimensions, e.g.
    `{"input_ids": [1, 128]}`."""
    path = Path(path)
    model = _read(path)
    opset = _opset(model, path)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    for node in model.graph.node:
        if node.domain not in _DEFAULT_DOMAINS or not onnx.defs.has(node.op_type):
            raise UnsupportedOpError(_unsupported(node, path))
    _check_external_data(model, path)
    # Read before _fix_input_shapes, which may drop the value_info holding the records.
    trainable = trainable_initializers(model)
    folded = _copies(model, trainable)
    _fix_input_shapes(model, dict(input_shapes or {}), path)
    return _Importer(model, _infer_types(model, path), path, opset, trainable, folded).run()


_INPUT_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
_FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"


def trainable_initializers(model: onnx.ModelProto) -> set[str]:
    """The initializers that are model weights, which training updates.

    ONNX has no such notion, so this is a rule. torch.onnx's dynamo exporter records the
    torch.export input kind of each initializer in value_info metadata: PARAMETER ones are the
    model's weights, BUFFER ones are not, and constants its optimizer folded (causal masks,
    position rows, transposed copies) carry no kind. When a file has that record, exactly the
    floating-point PARAMETER initializers are trainable. Otherwise (the TorchScript exporter,
    other tools) every floating-point initializer of rank >= 1 is, except those the TorchScript
    exporter names `onnx::...` (constants it made): scalars are constants, and an exported float
    constant under another name (a mask) may be marked too; `autodiff{wrt=...}` narrows it.
    """
    floats = {
        t.name
        for t in model.graph.initializer
        if t.data_type in _FLOAT_TYPES and len(t.dims) >= 1 and not t.name.startswith("onnx::")
    }
    kinds = {
        info.name: prop.value
        for info in model.graph.value_info
        for prop in info.metadata_props
        if prop.key == _INPUT_KIND
    }
    if not kinds:
        return floats
    return {name for name in floats if kinds.get(name) == "PARAMETER"}


def _copies(model: onnx.ModelProto, trainable: set[str]) -> dict[str, list[str]]:
    """Initializers that may be an exporter's transposed copy of a trainable matrix: each with
    the matrices it may copy (the importer compares the data).

    Exporters store `Transpose(lm_head.weight)` as a new initializer, which would untie the LM
    head from the embedding it shares: the dynamo exporter's optimizer records what it folded
    each initializer from (one source), the TorchScript exporter names such constants
    `onnx::MatMul_N`, a copy of some trainable matrix of the transposed shape.
    """
    out: dict[str, list[str]] = {}
    for info in model.graph.value_info:
        for prop in info.metadata_props:
            if prop.key == _FOLDED_FROM:
                sources = ast.literal_eval(prop.value)
                if isinstance(sources, list) and len(sources) == 1:
                    out[info.name] = [str(sources[0])]
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for name, dims in shapes.items():
        if name.startswith("onnx::") and len(dims) == 2:
            out[name] = [w for w in sorted(trainable) if shapes.get(w) == dims[::-1]]
    return out


def ir_value_name(onnx_name: str) -> str:
    """The IR name of an ONNX value: characters outside [A-Za-z0-9_.] become `_`.

    A name that collides after this mapping gets a `_1`, `_2`... suffix in the graph.
    """
    return re.sub(r"[^A-Za-z0-9_.]", "_", onnx_name.lstrip("/")) or "v"


# -- reading and checking the file ----------------------------------------------------------------


def _read(path: Path) -> onnx.ModelProto:
    """The model proto, without its external data (read later, weight by weight)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of an .onnx file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: the file is empty, not an ONNX model; export it again")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError):
        raise ModelError(
            f"{path}: not an ONNX model, or a truncated one; export it again"
        ) from None
    if model.ir_version == 0 or not model.HasField("graph"):
        raise ModelError(f"{path}: not an ONNX model (no IR version or graph); export it again")
    return model


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every external data file the weights name exists next to the model."""
    for tensor in model.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            location = external_data_helper.ExternalDataInfo(tensor).location
            if not (path.parent / location).is_file():
                raise InputError(
                    f"{path}: external data file '{location}' (weights of '{tensor.name}') is"
                    f" missing; put it next to the model, at {path.parent / location}"
                )


def _unsupported(node: onnx.NodeProto, path: Path) -> str:
    op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
    return (
        f"unsupported ONNX op '{op}' at node '{node.name or node.output[0]}' in {path.name};"
        " cgc imports the ops listed in cgc/frontends/onnx_ops.py, and any op whose inputs"
        " are constants"
    )


def _opset(model: onnx.ModelProto, path: Path) -> int:
    version = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)
    if version < MIN_OPSET:
        uses = f"uses ONNX opset {version}" if version else "declares no ONNX opset"
        raise ModelError(
            f"{path}: {uses}; cgc reads opset {MIN_OPSET} and newer:"
            f" export with opset_version={MIN_OPSET} or later"
        )
    return version


# -- input shapes ---------------------------------------------------------------------------------


def _fix_input_shapes(model: onnx.ModelProto, given: dict[str, Sequence[int]], path: Path) -> None:
    """Make every graph input's shape static from `given` (and dimension names it fixes)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    unknown = sorted(set(given) - {i.name for i in inputs})
    if unknown:
        raise InputError(
            f"input_shapes names {', '.join(unknown)}, but the inputs of {path.name} are"
            f" {', '.join(i.name for i in inputs)}"
        )
    sizes: dict[str, int] = {}  # dimension name (dim_param) -> size, from the given shapes
    for inp in inputs:
        if inp.name in given:
            sizes.update(_given_shape(inp, list(given[inp.name])))
    changed = False
    for inp in inputs:
        tensor = inp.type.tensor_type
        if inp.name in given:
            dims = list(given[inp.name])
        elif tensor.HasField("shape"):
            dims = [
                d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, -1)
                for d in tensor.shape.dim
            ]
        else:
            dims = None
        if dims is None or -1 in dims:
            raise InputError(_dynamic_message(inp, path))
        changed |= _dims(tensor) != dims
        tensor.shape.ClearField("dim")
        for d in dims:
            tensor.shape.dim.add().dim_value = d
    if changed:
        # Stale symbolic shapes from the exporter would fight the re-inferred static ones.
        del model.graph.value_info[:]
        for out in model.graph.output:
            if out.type.tensor_type.HasField("shape"):
                out.type.tensor_type.ClearField("shape")


def _dims(tensor: onnx.TypeProto.Tensor) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]


def _given_shape(inp: onnx.ValueInfoProto, shape: list[int]) -> dict[str, int]:
    """Check a user-given shape against the declared one; the dimension names it fixes."""
    tensor = inp.type.tensor_type
    if any(not isinstance(d, int | np.integer) or d < 1 for d in shape):
        raise InputError(f"input_shapes['{inp.name}'] = {shape}: sizes must be positive integers")
    if not tensor.HasField("shape"):
        return {}
    declared = _dims(tensor)
    if len(declared) != len(shape):
        raise InputError(
            f"input_shapes['{inp.name}'] = {shape} has {len(shape)} dimensions; the model"
            f" declares {len(declared)}: {declared}"
        )
    for axis, (d, s) in enumerate(zip(declared, shape, strict=True)):
        if isinstance(d, int) and d > 0 and d != s:
            raise InputError(
                f"input_shapes['{inp.name}'] = {shape}: dimension {axis} is fixed to {d}"
                " in the model"
            )
    return {d: s for d, s in zip(declared, shape, strict=True) if isinstance(d, str) and d}


def _dynamic_message(inp: onnx.ValueInfoProto, path: Path) -> str:
    tensor = inp.type.tensor_type
    if not tensor.HasField("shape"):
        return (
            f"input '{inp.name}' of {path.name} has no declared shape; give it one with"
            f" input_shapes={{'{inp.name}': [...]}} (CLI: --input-shape {inp.name}=AxB)"
        )
    dims = _dims(tensor)
    dynamic = [
        f"{axis} ({d or '?'})" for axis, d in enumerate(dims) if not isinstance(d, int) or d < 1
    ]
    # Example sizes for the usual [batch, seq] token inputs: batch 1, everything else 128.
    example = [
        d if isinstance(d, int) and d > 0 else (1 if axis == 0 else 128)
        for axis, d in enumerate(dims)
    ]
    return (
        f"input '{inp.name}' of {path.name} has dynamic dimension(s) {', '.join(dynamic)};"
        f" cgc compiles static shapes, so give fixed sizes: input_shapes={{'{inp.name}':"
        f" {example}}} in Python, or --input-shape {inp.name}={'x'.join(map(str, example))}"
        " on the command line"
    )


# -- import ---------------------------------------------------------------------------------------


def _infer_types(model: onnx.ModelProto, path: Path) -> dict[str, TensorType]:
    """ONNX shape inference's type of every value, where fully static and supported by cgc.

    Inference runs on a copy whose large initializers are typed graph inputs instead: the
    inference API serializes the whole model, which for inline weights costs seconds (and
    fails past 2 GB). Small initializers stay, so shape tensors still propagate their values.
    """
    graph = model.graph
    light = onnx.helper.make_graph(
        list(graph.node),
        graph.name,
        [*graph.input, *(_typed(t) for t in graph.initializer if _numel(t) > _INFER_KEEP)],
        list(graph.output),
        [t for t in graph.initializer if _numel(t) <= _INFER_KEEP],
        value_info=list(graph.value_info),
    )
    light_model = onnx.helper.make_model(
        light, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(
            light_model, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise ModelError(f"{path}: ONNX shape inference failed: {first_line(e)}") from None
    out = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        dims = _dims(tensor) if tensor.HasField("shape") else None
        if dims is not None and all(isinstance(d, int) for d in dims):
            if tensor.elem_type in ONNX_DTYPES:
                out[info.name] = TensorType(tuple(dims), ONNX_DTYPES[tensor.elem_type])
    return out


def _numel(tensor: TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _typed(tensor: TensorProto) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def _to_torch(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory; read-only arrays (views of protobuf bytes) are
    copied first, since torch needs writable memory."""
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    if array.dtype == NUMPY_DTYPES["bf16"]:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _python_scalar(array: np.ndarray, dtype: str) -> bool | int | float:
    item = array.reshape(())[()]
    if dtype == "bool":
        return bool(item)
    if dtype[0] in "iu":
        return int(item)
    shortest = float(str(item))  # str() of a numpy float: shortest round trip in its precision
    # ... but str(finfo(f32).min) read as a double lies past f32's range, which torch refuses
    return shortest if abs(shortest) <= float(ml_dtypes.finfo(array.dtype).max) else float(item)


def _scope(node: onnx.NodeProto) -> str | None:
    """The module path a node came from, e.g. "transformer.h.0.attn".

    The dynamo exporter records the scope stack in metadata (its node names do not encode it);
    the TorchScript exporter names nodes "/transformer/h.0/attn/MatMul".
    """
    props = {p.key: p.value for p in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in props:
        scopes = ast.literal_eval(props["pkg.torch.onnx.name_scopes"])
    elif "namespace" in props:
        scopes = [entry.split(":")[0].strip() for entry in props["namespace"].split("/")]
    elif node.name.startswith("/"):
        return ".".join(node.name.strip("/").split("/")[:-1]) or None
    else:
        return None
    # The last entry names the FX node; torch marks nodes without module stack with a hook name.
    modules = [s for s in scopes[:-1] if s and not s.startswith("_empty_nn_module_stack")]
    return modules[-1] if modules else None


class _Importer:
    """Walks the ONNX nodes in order, folding constants and converting the rest into IR."""

    def __init__(
        self,
        model: onnx.ModelProto,
        known: dict[str, TensorType],
        path: Path,
        opset: int,
        trainable: set[str],
        folded: dict[str, list[str]],
    ) -> None:
        self.model = model
        self.trainable = trainable
        self.folded = folded
        self.known = known  # value types from ONNX shape inference, checked against cgc's
        self.path = path
        self.opset = opset
        self.g = Graph(ir_value_name(path.stem))
        self.env: dict[str, Operand] = {}
        # Floating-point initializers of rank >= 2 (matrices, tables), trainable ones, and their
        # Identity copies.
        self.weights: set[str] = set(trainable)
        self.consumed = {name for node in model.graph.node for name in node.input}
        self.consumed |= {out.name for out in model.graph.output}
        self._cache: dict[tuple[str, bool], Value] = {}
        self._constants: set[int] = set()  # ids of values created for constants (named already)
        self._initial: dict[str, np.ndarray] = {}  # each initializer's array as read

    def run(self) -> Graph:
        graph = self.model.graph
        for tensor in graph.initializer:
            self.env[tensor.name] = self._array(tensor)
            self._initial[tensor.name] = self.env[tensor.name]
            if len(tensor.dims) >= 2 and tensor.data_type in _FLOAT_TYPES:
                self.weights.add(tensor.name)
        for tensor in graph.initializer:
            self._restore_transpose(tensor.name)
        for info in graph.input:
            if info.name not in self.env:
                self.env[info.name] = self.g.add_input(ir_value_name(info.name), self._type(info))
        for node in graph.node:
            self._import(node)
        self.g.outputs = [self._output(out.name) for out in graph.output]
        verify(self.g)
        return self.g

    # -- values --------------------------------------------------------------------------------

    def _restore_transpose(self, name: str) -> None:
        """An initializer an exporter made as the transpose of a trainable matrix becomes
        `transpose(matrix)`, so both uses train one weight (a tied LM head)."""
        copy = self._initial[name]
        source = next(
            (
                w
                for w in self.folded.get(name, [])
                if w in self.trainable
                and w in self._initial
                and self._initial[w].ndim == 2
                and np.array_equal(copy, self._initial[w].T)
            ),
            None,
        )
        if source is None:
            return
        weight = self._initial[source]
        with self.g.inserting_before(None, {"source": f"{self.path.name}:{name}"}):
            param = self._materialize(source, weight, False, True)
            names = [self.g.fresh_name(ir_value_name(name))]
            self.env[name] = self.g.add_node("transpose", [param], {"perm": [1, 0]}, names=names)
            self.env[name] = self.env[name].output
        self.weights.add(name)

    def _array(self, tensor: TensorProto) -> np.ndarray:
        """An initializer's data; external data is read straight into a writable array."""
        if not external_data_helper.uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        info = external_data_helper.ExternalDataInfo(tensor)
        file = self.path.parent / info.location
        if tensor.data_type not in ONNX_DTYPES:  # rare element types: let onnx decode them
            return numpy_helper.to_array(tensor, base_dir=str(self.path.parent))
        dtype = NUMPY_DTYPES[ONNX_DTYPES[tensor.data_type]]
        count = _numel(tensor)
        offset = info.offset or 0
        if file.stat().st_size < offset + count * dtype.itemsize:
            raise ModelError(
                f"{self.path}: external data file '{info.location}' ends before the weights"
                f" of '{tensor.name}'; it is truncated or belongs to another export"
            )
        return np.fromfile(file, dtype=dtype, count=count, offset=offset).reshape(tensor.dims)

    def _type(self, info: onnx.ValueInfoProto) -> TensorType:
        elem = info.type.tensor_type.elem_type
        if elem not in ONNX_DTYPES:
            name = TensorProto.DataType.Name(elem)
            raise UnsupportedOpError(
                f"input '{info.name}' of {self.path.name} has element type {name},"
                " which cgc does not support"
            )
        return TensorType(tuple(_dims(info.type.tensor_type)), ONNX_DTYPES[elem])

    def _materialize(self, key: str, array: np.ndarray, scalar: bool, cached: bool) -> Value:
        """A constant as an IR value: a scalar `constant` node, or a parameter holding its data."""
        if cached and (key, scalar) in self._cache:
            return self._cache[(key, scalar)]
        dtype = numpy_dtype(array, f"constant '{key}'")
        name = self.g.fresh_name(ir_value_name(key))
        if scalar:
            attrs = {"value": _python_scalar(array, dtype), "dtype": dtype, "shape": []}
            out = self.g.add_node("constant", [], attrs, names=[name]).output
        else:
            # A trainable initializer stays trainable only as itself (not cast or derived).
            trainable = key in self.trainable and array is self._initial.get(key)
            out = self.g.add_param(
                name, TensorType(array.shape, dtype), _to_torch(array), trainable=trainable
            )
        self._constants.add(id(out))
        if cached:
            self._cache[(key, scalar)] = out
        return out

    def _output(self, name: str) -> Value:
        value = self.env[name]
        return (
            self._materialize(name, value, False, True) if isinstance(value, np.ndarray) else value
        )

    # -- nodes ---------------------------------------------------------------------------------

    def _import(self, node: onnx.NodeProto) -> None:
        name = node.name or node.output[0]
        inputs = []
        for i in node.input:
            if i and i not in self.env:
                raise ModelError(f"{self.path}: node '{name}' reads '{i}', which nothing defines")
            inputs.append(self.env[i] if i else None)
        scope = _scope(node)
        meta = {"source": f"{self.path.name}:{name}"} | ({"scope": scope} if scope else {})
        start = len(self.g.nodes)
        try:
            with self.g.inserting_before(None, meta):
                if self._foldable(node, inputs):
                    outs = self._fold(node, inputs, name)
                elif node.op_type in CONVERTERS:
                    outs = CONVERTERS[node.op_type](
                        OnnxNode(node, self.g, inputs, self._materialize)
                    )
                else:
                    raise UnsupportedOpError(_unsupported(node, self.path))
        except IRError as e:
            raise ModelError(f"{self.path}: node '{name}' ({node.op_type}): {e}") from None
        self._bind(node, name, outs, start)
        # A weight passed through unchanged (Identity, Dropout) is a weight under its new name.
        passed = {id(x) for i, x in zip(node.input, inputs, strict=True) if i in self.weights}
        self.weights |= {o for o, x in zip(node.output, outs, strict=False) if id(x) in passed}

    def _foldable(self, node: onnx.NodeProto, inputs: list[Operand | None]) -> bool:
        if not all(x is None or isinstance(x, np.ndarray) for x in inputs):
            return False
        # Ops cgc converts are not evaluated on weights: a tied embedding stays one parameter
        # (not a second, transposed copy for the LM head), and position lookups stay embeddings.
        on_weights = any(name in self.weights for name in node.input)
        return not (on_weights and node.op_type in CONVERTERS)

    def _fold(self, node: onnx.NodeProto, inputs: list[Operand | None], name: str) -> list:
        """Evaluate a node whose inputs are all constants."""
        feeds = {i: x for i, x in zip(node.input, inputs, strict=True) if i}
        try:
            outs = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
        except Exception as e:  # the reference evaluator raises whatever numpy raises
            raise ModelError(
                f"{self.path}: cannot evaluate constant node '{name}' ({node.op_type}):"
                f" {first_line(e)}"
            ) from None
        return [np.asarray(o) for o in outs]

    def _bind(self, node: onnx.NodeProto, name: str, outs: list[Operand], start: int) -> None:
        """Record the node's outputs and give the IR values made for it their ONNX names."""
        for i, out_name in enumerate(node.output[len(outs) :], start=len(outs)):
            if out_name and out_name in self.consumed:
                raise UnsupportedOpError(
                    f"output {i} ('{out_name}') of ONNX op '{node.op_type}' at node '{name}'"
                    " is not supported; only its first output is"
                )
        new = {id(v) for n in self.g.nodes[start:] for v in n.outputs} - self._constants
        finals = {id(out) for out in outs if isinstance(out, Value)}
        primary = ir_value_name(next((o for o in node.output if o), name))
        # Intermediates first, so that temporary names they hold become free for the outputs.
        for n in self.g.nodes[start:]:
            for v in n.outputs:
                if id(v) in new and id(v) not in finals:
                    self.g.rename(v, self.g.fresh_name(f"{primary}.{n.op}"))
        for out_name, out in zip(node.output, outs, strict=False):
            if not out_name:
                continue
            if isinstance(out, Value) and id(out) in new:
                new.discard(id(out))
                target = ir_value_name(out_name)
                if out.name != target:
                    self.g.rename(out, self.g.fresh_name(target))
            self._check_type(node, name, out_name, out)
            self.env[out_name] = out

    def _check_type(self, node: onnx.NodeProto, name: str, out_name: str, out: Operand) -> None:
        expected = self.known.get(out_name)
        if expected is None:
            return
        if isinstance(out, Value):
            actual = out.type
        else:
            actual = TensorType(out.shape, numpy_dtype(out, f"'{out_name}'"))
        if actual != expected:
            raise ModelError(
                f"{self.path}: node '{name}' ({node.op_type}): ONNX shape inference gives"
                f" {expected} for '{out_name}', but cgc computed {actual}"
            )
