"""The ONNX → IR op table: one converter per ONNX op that can take runtime (non-constant) inputs.

A converter sees one ONNX node through `OnnxNode` and returns, per ONNX output, an IR value or a
numpy constant. Nodes whose inputs are all constants never reach a converter: the importer folds
them (`cgc.frontends.onnx`), which is how shape arithmetic, masks and `Constant` disappear.
Fused ONNX ops (LayerNormalization, Gelu, Attention) become the primitive decomposition of the
matching IR op, so the default pipeline re-fuses them exactly as it fuses traced graphs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto

from cgc.errors import ModelError, UnsupportedOpError
from cgc.ir import Graph, Value, get_op
from cgc.ir.ops import loss
from cgc.ir.ops.random import add_dropout

# ONNX element type -> IR dtype; every other element type is unsupported.
ONNX_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "f32",
    TensorProto.DOUBLE: "f64",
    TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.INT64: "i64",
    TensorProto.INT32: "i32",
    TensorProto.INT16: "i16",
    TensorProto.INT8: "i8",
    TensorProto.UINT8: "u8",
    TensorProto.BOOL: "bool",
}
# IR dtype -> numpy dtype (bf16 from ml_dtypes, which onnx itself uses).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
_IR_DTYPES: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPES.items()}

Operand = Value | np.ndarray
# (ONNX value name or a derived key, data, scalar?, reuse per key?) -> the IR value holding it.
Materialize = Callable[[str, np.ndarray, bool, bool], Value]


def numpy_dtype(array: np.ndarray, what: str) -> str:
    """IR dtype of a numpy array; UnsupportedOpError names the tensor otherwise."""
    try:
        return _IR_DTYPES[array.dtype]
    except KeyError:
        raise UnsupportedOpError(
            f"{what} has element type {array.dtype.name}, which cgc does not support"
        ) from None


class OnnxNode:
    """One ONNX node as a converter sees it: attributes, and inputs as IR values or constants."""

    def __init__(
        self,
        proto: onnx.NodeProto,
        graph: Graph,
        inputs: Sequence[Operand | None],
        materialize: Materialize,
    ) -> None:
        self.proto = proto
        self.g = graph
        self.inputs = list(inputs)
        self._materialize = materialize
        self.attrs: dict[str, Any] = {
            a.name: _attr_value(onnx.helper.get_attribute_value(a)) for a in proto.attribute
        }

    @property
    def op(self) -> str:
        return self.proto.op_type

    @property
    def name(self) -> str:
        return self.proto.name or self.proto.output[0]

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def has(self, i: int) -> bool:
        """Whether optional input `i` is given."""
        return i < len(self.inputs) and self.inputs[i] is not None

    def const(self, i: int) -> np.ndarray | None:
        """Input `i` as a numpy array when it is a constant, else None."""
        x = self.inputs[i] if self.has(i) else None
        return x if isinstance(x, np.ndarray) else None

    def required_const(self, i: int, what: str) -> np.ndarray:
        """Input `i`, which cgc needs as a constant (a shape, axes, split sizes)."""
        x = self.const(i)
        if x is None:
            raise self.unsupported(f"its {what} (input {i}) is computed at run time, not constant")
        return x

    def shape(self, i: int) -> tuple[int, ...]:
        x = self.inputs[i]
        return tuple(x.shape)

    def dtype(self, i: int) -> str:
        x = self.inputs[i]
        return x.dtype if isinstance(x, Value) else numpy_dtype(x, f"input {i} of {self.name}")

    def value(self, i: int, *, scalar: bool = False, dtype: str | None = None) -> Value:
        """Input `i` as an IR value; constants become parameters, or `constant` nodes if scalar."""
        x = self.inputs[i]
        if isinstance(x, Value):
            return x
        key = self.proto.input[i]
        if dtype is not None and numpy_dtype(x, key) != dtype:
            x, key = x.astype(NUMPY_DTYPES[dtype]), f"{key}.{dtype}"
        return self._materialize(key, x, scalar, True)

    def constant(self, array: np.ndarray, key: str) -> Value:
        """A derived constant (e.g. a pre-scaled bias) as an IR value."""
        return self._materialize(key, array, array.ndim == 0, False)

    def operands(self, dtype: str | None = None) -> list[Value]:
        """All inputs of an elementwise op; one-element constants that broadcast away are scalars.

        A [1]- or [1,1]-shaped constant next to a tensor of at least that rank does not change
        the broadcast shape, so it can be a scalar `constant` node as fusion patterns expect.
        """
        ranks = [len(x.shape) for x in self.inputs]
        out = []
        for i, x in enumerate(self.inputs):
            peer = max((r for j, r in enumerate(ranks) if j != i), default=0)
            scalar = isinstance(x, np.ndarray) and x.size == 1 and x.ndim <= peer
            out.append(self.value(i, scalar=scalar, dtype=dtype))
        return out

    def call(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        return self.g.call(op, *inputs, **attrs)

    def scalar(self, value: float, dtype: str) -> Value:
        return self.g.constant(value, dtype)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"ONNX op '{self.op}' at node '{self.name}': {why}")


def _attr_value(value: Any) -> Any:
    """Attribute values as plain Python data (strings decoded, tensors as numpy).

    Float attributes are float32 in ONNX; the shortest decimal that round-trips in float32
    recovers the number the exporter was given (1e-05, not 9.999999747378752e-06).
    """
    if isinstance(value, float):
        return float(str(np.float32(value)))
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_attr_value(v) for v in value]
    return value


Converter = Callable[[OnnxNode], list[Operand]]
CONVERTERS: dict[str, Converter] = {}


def converts(*ops: str) -> Callable[[Converter], Converter]:
    """Register a converter for the ONNX ops `ops` (default domain)."""

    def wrap(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn

    return wrap


def _norm_axis(axis: int, rank: int, n: OnnxNode) -> int:
    if not -rank <= axis < rank:
        raise ModelError(f"node '{n.name}' ({n.op}): axis {axis} is out of range for rank {rank}")
    return axis % rank


# -- elementwise ----------------------------------------------------------------------------------

_UNARY = {
    "Neg": "neg",
    "Abs": "abs",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Reciprocal": "reciprocal",
    "Tanh": "tanh",
    "Erf": "erf",
    "Sigmoid": "sigmoid",
    "Relu": "relu",
    "Cos": "cos",
    "Sin": "sin",
    "Not": "logical_not",
}
_BINARY = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Equal": "eq",
    "Less": "lt",
    "LessOrEqual": "le",
    "Greater": "gt",
    "GreaterOrEqual": "ge",
    "And": "logical_and",
    "Or": "logical_or",
}


def _unary(ir_op: str) -> Converter:
    def convert(n: OnnxNode) -> list[Operand]:
        return [n.call(ir_op, n.value(0))]

    return convert


def _binary(ir_op: str) -> Converter:
    def convert(n: OnnxNode) -> list[Operand]:
        return [n.call(ir_op, *n.operands())]

    return convert


for _onnx_op, _ir_op in _UNARY.items():
    converts(_onnx_op)(_unary(_ir_op))
for _onnx_op, _ir_op in _BINARY.items():
    converts(_onnx_op)(_binary(_ir_op))


@converts("Div")
def _div(n: OnnxNode) -> list[Operand]:
    # ONNX truncates integer division; the IR's div is true division.
    if not n.dtype(0).startswith(("f", "bf")):
        raise n.unsupported(f"integer division of run-time {n.dtype(0)} values")
    return [n.call("div", *n.operands())]


@converts("Pow")
def _pow(n: OnnxNode) -> list[Operand]:
    # ONNX lets the exponent have its own type; IR binary ops need equal dtypes.
    base, exponent = n.operands(dtype=n.dtype(0))
    if exponent.dtype != base.dtype:
        exponent = n.call("cast", exponent, dtype=base.dtype)
    return [n.call("pow", base, exponent)]


@converts("Max", "Min")
def _max_min(n: OnnxNode) -> list[Operand]:
    ir_op = "maximum" if n.op == "Max" else "minimum"
    values = n.operands()
    out = values[0]
    for v in values[1:]:
        out = n.call(ir_op, out, v)
    return [out]


@converts("Where")
def _where(n: OnnxNode) -> list[Operand]:
    return [n.call("where", *n.operands())]


@converts("IsNaN")
def _isnan(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    return [n.call("ne", x, x)]  # NaN is the only value not equal to itself


@converts("Cast", "CastLike")
def _cast(n: OnnxNode) -> list[Operand]:
    if n.op == "CastLike":
        dtype = n.dtype(1)
    else:
        to = n.attr("to")
        if to not in ONNX_DTYPES:
            name = TensorProto.DataType.Name(to)
            raise n.unsupported(f"cast to {name}, an element type cgc does not support")
        dtype = ONNX_DTYPES[to]
    x = n.value(0)
    return [x if x.dtype == dtype else n.call("cast", x, dtype=dtype)]


@converts("Identity")
def _identity(n: OnnxNode) -> list[Operand]:
    return [n.inputs[0]]


@converts("Dropout")
def _dropout(n: OnnxNode) -> list[Operand]:
    """The identity at inference; with training_mode true a seeded `dropout` on %rng_seed.

    Its optional mask output is rejected by the importer (the mask is recomputed, not kept)."""
    training = n.const(2) if n.has(2) else np.array(False)
    if training is None:
        raise n.unsupported("its training_mode (input 2) is computed at run time, not constant")
    if n.has(1) and n.const(1) is None:
        raise n.unsupported("its ratio (input 1) is computed at run time, not constant")
    ratio = float(n.const(1)) if n.has(1) else 0.5
    if not bool(training) or ratio == 0:
        return [n.inputs[0]]
    return [add_dropout(n.g, n.value(0), ratio)]


# -- linear algebra -------------------------------------------------------------------------------


@converts("MatMul")
def _matmul(n: OnnxNode) -> list[Operand]:
    a, b = n.value(0), n.value(1)
    # numpy semantics for 1-D operands: promote to a matrix, then drop the added axis.
    if a.type.rank == 1:
        out = n.call("matmul", n.call("reshape", a, shape=[1, a.shape[0]]), b)
        return [n.call("reshape", out, shape=list(out.shape[:-2] + out.shape[-1:]))]
    if b.type.rank == 1:
        out = n.call("matmul", a, n.call("reshape", b, shape=[b.shape[0], 1]))
        return [n.call("reshape", out, shape=list(out.shape[:-1]))]
    return [n.call("matmul", a, b)]


@converts("Gemm")
def _gemm(n: OnnxNode) -> list[Operand]:
    """alpha·A'·B' + beta·C, with the transposes explicit so linear fusion sees x @ wᵀ + b."""
    a, b = n.value(0), n.value(1)
    if n.attr("transA", 0):
        a = n.call("transpose", a, perm=[1, 0])
    if n.attr("transB", 0):
        b = n.call("transpose", b, perm=[1, 0])
    y = n.call("matmul", a, b)
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    if alpha != 1.0:
        y = n.call("mul", y, n.scalar(alpha, y.dtype))
    if not n.has(2) or beta == 0.0:
        return [y]
    # C stays itself (a constant C is folded later unless it is a trainable weight).
    bias = n.value(2)
    if beta != 1.0:
        bias = n.call("mul", bias, n.scalar(beta, bias.dtype))
    return [n.call("add", y, bias)]


# -- reductions and normalisations ----------------------------------------------------------------


@converts("Softmax", "LogSoftmax")
def _softmax(n: OnnxNode) -> list[Operand]:
    ir_op = "softmax" if n.op == "Softmax" else "log_softmax"
    return [n.call(ir_op, n.value(0), axis=n.attr("axis", -1))]


def _reduce(ir_op: str) -> Converter:
    def convert(n: OnnxNode) -> list[Operand]:
        x = n.value(0)
        # Opset 18 moved `axes` from an attribute to an optional input.
        if n.has(1):
            axes = [int(a) for a in n.required_const(1, "axes")]
        else:
            axes = list(n.attr("axes", []))
        if not axes:
            if n.attr("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.type.rank))
        return [n.call(ir_op, x, axes=axes, keepdim=bool(n.attr("keepdims", 1)))]

    return convert


@converts("ReduceLogSumExp")
def _reduce_log_sum_exp(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    axes = [int(a) for a in n.required_const(1, "axes")] if n.has(1) else n.attr("axes", [])
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.type.rank))
    return [loss.logsumexp(n.g, x, axes, bool(n.attr("keepdims", 1)))]


converts("ReduceMean")(_reduce("reduce_mean"))
converts("ReduceSum")(_reduce("reduce_sum"))
converts("ReduceMax")(_reduce("reduce_max"))


@converts("LayerNormalization")
def _layer_norm(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    if _norm_axis(n.attr("axis", -1), x.type.rank, n) != x.type.rank - 1:
        raise n.unsupported("normalisation over more than the last axis")
    params = [n.value(i) for i in (1, 2) if n.has(i)]
    return get_op("layer_norm").decompose(n.g, [x, *params], {"eps": n.attr("epsilon", 1e-5)})


@converts("RMSNormalization")
def _rms_norm(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    if _norm_axis(n.attr("axis", -1), x.type.rank, n) != x.type.rank - 1:
        raise n.unsupported("normalisation over more than the last axis")
    attrs = {"eps": n.attr("epsilon", 1e-5)}
    return get_op("rms_norm").decompose(n.g, [x, n.value(1)], attrs)


@converts("CumSum")
def _cumsum(n: OnnxNode) -> list[Operand]:
    if n.attr("exclusive", 0) or n.attr("reverse", 0):
        raise n.unsupported("exclusive or reverse running sums")
    x = n.value(0)
    axis = _norm_axis(int(n.required_const(1, "axis")), x.type.rank, n)
    return [n.call("cumsum", x, axis=axis)]


@converts("Gelu")
def _gelu(n: OnnxNode) -> list[Operand]:
    attrs = {"approximate": n.attr("approximate", "none")}
    return get_op("gelu").decompose(n.g, [n.value(0)], attrs)


@converts("Attention")
def _attention(n: OnnxNode) -> list[Operand]:
    """ONNX Attention (opset 23+) without KV cache, as the IR attention decomposition."""
    for i, what in ((4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")):
        if n.has(i):
            raise n.unsupported(f"the {what} input (KV cache) is not supported")
    if n.attr("softcap", 0.0) or n.attr("qk_matmul_output_mode", 0):
        raise n.unsupported("softcap and qk_matmul_output_mode are not supported")
    if n.attr("left_window_size", -1) != -1 or n.attr("right_window_size", -1) != -1:
        raise n.unsupported("sliding-window attention is not supported")
    q, k, v = (n.value(i) for i in range(3))
    four_d = q.type.rank == 4
    if four_d:  # [batch, heads, seq, d_head] -> [batch, seq, heads·d_head]
        heads, kv_heads, d_head = q.shape[1], k.shape[1], q.shape[3]
        q, k, v = (_merge_heads(n, t) for t in (q, k, v))
    else:
        heads = n.attr("q_num_heads")
        kv_heads = n.attr("kv_num_heads", heads)
        if heads is None:
            raise ModelError(f"node '{n.name}' (Attention): 3-D inputs need q_num_heads")
        d_head = q.shape[2] // heads
    causal = bool(n.attr("is_causal", 0))
    if causal and q.shape[1] != k.shape[1]:
        # ONNX aligns the causal mask to the top left, the IR to the bottom right.
        raise n.unsupported("causal attention with different query and key lengths")
    scale = n.attr("scale")
    attention = get_op("attention")
    attrs = attention.complete_attrs(
        {
            "num_heads": heads,
            "num_kv_heads": kv_heads,
            "causal": causal,
            "scale": scale or 1.0 / math.sqrt(d_head),
        }
    )
    inputs = [q, k, v]
    if n.has(3):
        inputs.append(_additive_mask(n, q.dtype))
    out = attention.decompose(n.g, inputs, attrs)[0]
    if four_d:
        b, t, e = out.shape
        out = n.call("reshape", out, shape=[b, t, heads, e // heads])
        out = n.call("transpose", out, perm=[0, 2, 1, 3])
    return [out]


def _merge_heads(n: OnnxNode, x: Value) -> Value:
    b, h, t, d = x.shape
    x = n.call("transpose", x, perm=[0, 2, 1, 3])
    return n.call("reshape", x, shape=[b, t, h * d])


def _additive_mask(n: OnnxNode, dtype: str) -> Value:
    """A boolean attention mask (True = attend) as the additive 0 / -inf mask the IR takes."""
    if n.dtype(3) != "bool":
        return n.value(3)
    mask = n.const(3)
    if mask is not None:
        return n.constant(np.where(mask, 0.0, -np.inf).astype(NUMPY_DTYPES[dtype]), "mask")
    keep = n.value(3)
    return n.call("where", keep, n.scalar(0.0, dtype), n.scalar(float("-inf"), dtype))


# -- shapes ---------------------------------------------------------------------------------------


@converts("Shape")
def _shape(n: OnnxNode) -> list[Operand]:
    # Shapes are static, so Shape is a constant even when its input is not.
    start, end = n.attr("start", 0), n.attr("end", None)
    return [np.array(n.shape(0)[start:end], dtype=np.int64)]


@converts("Size")
def _size(n: OnnxNode) -> list[Operand]:
    return [np.array(math.prod(n.shape(0)), dtype=np.int64)]


def _reshaped(n: OnnxNode, x: Value, shape: Sequence[int]) -> Value:
    return x if tuple(shape) == x.shape else n.call("reshape", x, shape=list(shape))


@converts("Reshape")
def _reshape(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    spec = [int(d) for d in n.required_const(1, "target shape")]
    if not n.attr("allowzero", 0):  # 0 copies the input's size on that axis
        spec = [x.shape[i] if d == 0 else d for i, d in enumerate(spec)]
    if spec.count(-1) > 1:
        raise ModelError(f"node '{n.name}' (Reshape): more than one -1 in {spec}")
    if -1 in spec:
        known = math.prod(d for d in spec if d != -1)
        spec[spec.index(-1)] = x.type.numel // known if known else 0
    if math.prod(spec) != x.type.numel:
        raise ModelError(f"node '{n.name}' (Reshape): cannot reshape {x.type} to {spec}")
    return [_reshaped(n, x, spec)]


@converts("Flatten")
def _flatten(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    axis = n.attr("axis", 1)
    axis = axis + x.type.rank if axis < 0 else axis
    return [_reshaped(n, x, [math.prod(x.shape[:axis]), math.prod(x.shape[axis:])])]


def _axes(n: OnnxNode) -> list[int] | None:
    # Squeeze/Unsqueeze take axes as an input since opset 13.
    if n.has(1):
        return [int(a) for a in n.required_const(1, "axes")]
    return n.attr("axes")


@converts("Squeeze")
def _squeeze(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    axes = _axes(n)
    if axes is None:
        drop = {i for i, d in enumerate(x.shape) if d == 1}
    else:
        drop = {_norm_axis(a, x.type.rank, n) for a in axes}
    return [_reshaped(n, x, [d for i, d in enumerate(x.shape) if i not in drop])]


@converts("Unsqueeze")
def _unsqueeze(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    axes = _axes(n) or []
    rank = x.type.rank + len(axes)
    inserted = {_norm_axis(a, rank, n) for a in axes}
    dims = iter(x.shape)
    return [_reshaped(n, x, [1 if i in inserted else next(dims) for i in range(rank)])]


@converts("Transpose")
def _transpose(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    perm = list(n.attr("perm", range(x.type.rank - 1, -1, -1)))
    return [x if perm == list(range(x.type.rank)) else n.call("transpose", x, perm=perm)]


@converts("Expand")
def _expand(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    target = [int(d) for d in n.required_const(1, "target shape")]
    try:  # ONNX Expand broadcasts both ways: a 1 in the target keeps the input's size
        shape = np.broadcast_shapes(x.shape, tuple(target))
    except ValueError:
        raise ModelError(f"node '{n.name}' (Expand): cannot expand {x.type} to {target}") from None
    return [x if shape == x.shape else n.call("expand", x, shape=list(shape))]


@converts("Concat")
def _concat(n: OnnxNode) -> list[Operand]:
    parts = [n.value(i) for i in range(len(n.inputs))]
    if len(parts) == 1:
        return parts
    return [n.call("concat", *parts, axis=n.attr("axis"))]


def _slice_axis(n: OnnxNode, x: Value, axis: int, start: int, end: int, step: int) -> Value:
    """x[start:end:step] on one axis with ONNX clamping (that of Python slices)."""
    if step < 1:
        raise n.unsupported(f"negative slice step {step}")
    start, end, step = slice(start, end, step).indices(x.shape[axis])
    end = max(start, end)
    if (start, end, step) == (0, x.shape[axis], 1):
        return x
    return n.call("slice", x, axis=axis, start=start, end=end, step=step)


@converts("Slice")
def _slice(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    starts = n.required_const(1, "starts")
    ends = n.required_const(2, "ends")
    axes = n.required_const(3, "axes") if n.has(3) else range(len(starts))
    steps = n.required_const(4, "steps") if n.has(4) else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _norm_axis(int(axis), x.type.rank, n)
        x = _slice_axis(n, x, axis, int(start), int(end), int(step))
    return [x]


@converts("Split")
def _split(n: OnnxNode) -> list[Operand]:
    x = n.value(0)
    axis = _norm_axis(n.attr("axis", 0), x.type.rank, n)
    dim, parts = x.shape[axis], len(n.proto.output)
    if n.has(1):
        sizes = [int(s) for s in n.required_const(1, "split sizes")]
    elif n.attr("num_outputs") is not None:  # opset 18: the last chunk may be smaller
        chunk = -(-dim // n.attr("num_outputs"))
        sizes = [min(chunk, dim - i * chunk) for i in range(parts)]
    else:
        sizes = [dim // parts] * parts
    if sum(sizes) != dim or len(sizes) != parts:
        raise ModelError(f"node '{n.name}' (Split): sizes {sizes} do not split {dim} {parts} ways")
    offsets = np.cumsum([0, *sizes])
    return [
        _slice_axis(n, x, axis, int(lo), int(hi), 1)
        for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)
    ]


@converts("GatherND")
def _gather_nd(n: OnnxNode) -> list[Operand]:
    """Elements or slices picked by constant index tuples (Hugging Face's mask builders index
    the padding mask with aranges): a gather of rows of the data viewed as [rows, rest], or a
    reshape when every row is picked in order."""
    if n.attr("batch_dims", 0):
        raise n.unsupported("batch_dims")
    indices = n.required_const(1, "indices").astype(np.int64)
    x = n.value(0)
    depth = indices.shape[-1]
    dims = x.shape[:depth]
    rows = np.zeros(indices.shape[:-1], dtype=np.int64)
    for axis, size in enumerate(dims):
        rows = rows * size + indices[..., axis] % size
    rest = x.shape[depth:]
    count = math.prod(dims)
    if rows.size == count and np.array_equal(rows.reshape(-1), np.arange(count)):
        return [_reshaped(n, x, [*rows.shape, *rest])]
    table = _reshaped(n, x, [count, math.prod(rest)])
    ids = n.constant(rows, "rows")
    gathered = n.call("embedding", table, ids) if x.type.is_float else None
    if gathered is None:
        raise n.unsupported(f"gathering {x.type.dtype} elements in another order")
    return [_reshaped(n, gathered, [*rows.shape, *rest])]


@converts("Gather")
def _gather(n: OnnxNode) -> list[Operand]:
    """Rows of a [vocab, dim] weight table, or rows picked at run time, are an embedding;
    other constant indices that form an increasing range are a slice."""
    axis = _norm_axis(n.attr("axis", 0), len(n.shape(0)), n)
    ids = n.const(1)
    lookup = axis == 0 and len(n.shape(0)) == 2 and n.dtype(1) in ("i64", "i32")
    if lookup and (ids is None or n.const(0) is not None):
        return [n.call("embedding", n.value(0), n.value(1))]
    if ids is None:
        raise n.unsupported("only row lookups in a [vocab, dim] table take run-time indices")
    if ids.ndim > 1 or ids.size == 0:
        raise n.unsupported(f"constant indices of shape {list(ids.shape)}")
    x = n.value(0)
    dim = x.shape[axis]
    flat = [int(i) % dim for i in ids.reshape(-1)]
    step = flat[1] - flat[0] if len(flat) > 1 else 1
    if step < 1 or flat != list(range(flat[0], flat[0] + step * len(flat), step)):
        raise n.unsupported(f"gathering indices {flat} that are not an increasing range")
    out = _slice_axis(n, x, axis, flat[0], flat[-1] + 1, step)
    if ids.ndim == 0:  # a scalar index drops the axis
        out = _reshaped(n, out, x.shape[:axis] + x.shape[axis + 1 :])
    return [out]


@converts("GatherElements")
def _gather_elements(n: OnnxNode) -> list[Operand]:
    """A one-hot select and sum (the IR has no gather); negative indices count from the end."""
    x, index = n.value(0), n.value(1)
    axis = _norm_axis(n.attr("axis", 0), x.type.rank, n)
    if n.const(1) is None or (n.const(1) < 0).any():
        negative = n.call("lt", index, n.scalar(0, index.dtype))
        wrapped = n.call("add", index, n.scalar(x.shape[axis], index.dtype))
        index = n.call("where", negative, wrapped, index)
    return [loss.gather(n.g, x, axis, index)]


# -- losses ----------------------------------------------------------------------------------------


@converts("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss")
def _loss(n: OnnxNode) -> list[Operand]:
    """Unweighted losses on class indices, as log_softmax and nll_loss primitives (class axis 1,
    or [N, C, d1, …] with the class axis moved last); fuse-cross-entropy fuses them again."""
    if n.has(2):
        raise n.unsupported("class weights (input 2); cgc imports unweighted losses only")
    x, target = n.value(0), n.value(1)
    if target.dtype not in loss.INDEX_DTYPES:
        raise n.unsupported(f"{target.dtype} targets; cgc imports class indices only")
    rows_x, rows = loss.classes_last(n.g, x, target)
    logp = rows_x
    if n.op == "SoftmaxCrossEntropyLoss":
        logp = n.call("log_softmax", rows_x, axis=-1)
    reduction = n.attr("reduction", "mean")
    out = loss.nll_loss(n.g, logp, rows, ignore_index=n.attr("ignore_index"), reduction=reduction)
    outs = [_reshaped(n, out, target.shape if reduction == "none" else ())]
    if n.op == "SoftmaxCrossEntropyLoss" and len(n.proto.output) > 1 and n.proto.output[1]:
        if x.type.rank > 2:  # log_prob in the input's layout
            rank = x.type.rank
            logp = n.call("transpose", logp, perm=[0, rank - 1, *range(1, rank - 1)])
        outs.append(_reshaped(n, logp, x.shape))
    return outs
