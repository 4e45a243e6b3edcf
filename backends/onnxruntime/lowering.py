"""The lowering table: IR op name → a function emitting the ONNX nodes that compute it.

Fused ops lower to single ONNX Runtime kernels (LayerNormalization, Gelu, Gemm, Attention), so
the graph ORT runs is the fused graph cgc built. Primitives map one-to-one where ONNX has the op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from math import prod
from typing import Any

import numpy as np
import torch
from onnx import NodeProto, TensorProto, helper

from cgc.errors import UnsupportedOpError
from cgc.ir import Node, Value
from cgc.ir.ops.nn import position_bias
from cgc.ir.ops.random import (
    LANES,
    MASK32,
    PHILOX_M,
    PHILOX_ROUNDS,
    PHILOX_W,
    keep_scale,
    keep_threshold,
)
from cgc.ir.types import TORCH_DTYPES, dtype_name

OPSET = 23  # the default-domain opset: Attention arrived in 23
QUERY_BLOCK = 256  # queries per block of long causal contrib Attention (see _qkv_attention)
GQA_FROM = 512  # causal self-attention this long runs as GroupQueryAttention (see _attention)
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops

ONNX_DTYPES: dict[str, int] = {
    "f64": TensorProto.DOUBLE,
    "f32": TensorProto.FLOAT,
    "f16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "i64": TensorProto.INT64,
    "i32": TensorProto.INT32,
    "i16": TensorProto.INT16,
    "i8": TensorProto.INT8,
    "u8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
}


def raw_bytes(data: torch.Tensor) -> np.ndarray:
    """The tensor's little-endian bytes as a uint8 array, without a copy when it is contiguous."""
    return data.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def tensor_proto(name: str, data: torch.Tensor) -> TensorProto:
    """A TensorProto holding `data` as raw bytes (raw bytes cover every IR dtype, bf16 too)."""
    proto = TensorProto(name=name, data_type=ONNX_DTYPES[dtype_name(data.dtype)])
    proto.dims.extend(data.shape)
    proto.raw_data = raw_bytes(data).tobytes()
    return proto


class Emitter:
    """Collects the ONNX nodes and small constants that the IR nodes lower to.

    ONNX value names are the IR value names. Helper values are named `<IR output>/<hint>`, which
    cannot clash with IR names (they never contain '/'). Every ONNX node is named after the value
    it computes and carries the IR node's source line, so ORT profiles and errors map back.
    """

    def __init__(self, graph_outputs: Sequence[Value] = ()) -> None:
        self.graph_outputs = {id(v) for v in graph_outputs}
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.opsets: dict[str, int] = {"": OPSET}
        self._node: Node | None = None
        self._taken: set[str] = set()

    def lower(self, node: Node) -> None:
        """Emit the ONNX nodes computing `node`; an op without a lowering is an error."""
        lowering = LOWERINGS.get(node.op)
        if lowering is None:
            source = node.meta.get("source", "unknown source")
            raise UnsupportedOpError(
                f"the onnxruntime backend cannot lower op {node.op!r} ({source}); "
                "decompose it into primitives before export"
            )
        self._node = node
        lowering(self, node)

    def is_graph_output(self, value: Value) -> bool:
        """Whether `value` leaves the model (ORT copies into outputs what merely views a tensor)."""
        return id(value) in self.graph_outputs

    def fresh(self, hint: str) -> str:
        """A new helper value name derived from the current IR node's output."""
        assert self._node is not None
        base = f"{self._node.outputs[0].name}/{hint}"
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        out: str | Sequence[str] | None = None,
        *,
        domain: str = "",
        **attrs: Any,
    ) -> str:
        """Append one ONNX node and return its (first) output: `out`, or a fresh helper name."""
        assert self._node is not None
        if domain:
            self.opsets.setdefault(domain, 1)  # contrib domains have one version
        outs = [out or self.fresh(op_type.lower())] if out is None or isinstance(out, str) else out
        out = outs[0]
        meta = self._node.meta
        node = helper.make_node(op_type, list(inputs), list(outs), name=out, domain=domain, **attrs)
        node.doc_string = meta.get("source", "")
        if "scope" in meta:
            helper.set_metadata_props(node, {"scope": meta["scope"]})
        self.nodes.append(node)
        return out

    def tensor(self, data: torch.Tensor, hint: str) -> str:
        """A constant made by the lowering (shapes, axes, masks) as an inline initializer."""
        name = self.fresh(hint)
        self.initializers.append(tensor_proto(name, data))
        return name

    def ints(self, values: Sequence[int], hint: str) -> str:
        """An int64 vector constant, the form ONNX takes shapes, axes and slice bounds in."""
        return self.tensor(torch.tensor(list(values), dtype=torch.int64), hint)


Lowering = Callable[[Emitter, Node], None]
LOWERINGS: dict[str, Lowering] = {}


def lowering(*ops: str) -> Callable[[Lowering], Lowering]:
    """Register a function as the lowering of IR ops `ops`."""

    def wrap(fn: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return wrap


def _names(values: Sequence[Value]) -> list[str]:
    return [v.name for v in values]


# -- one-to-one ops -----------------------------------------------------------------------------

_DIRECT = {
    "neg": "Neg",
    "abs": "Abs",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "reciprocal": "Reciprocal",
    "tanh": "Tanh",
    "erf": "Erf",
    "cos": "Cos",
    "sin": "Sin",
    "sigmoid": "Sigmoid",
    "relu": "Relu",
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "pow": "Pow",
    "maximum": "Max",
    "minimum": "Min",
    "eq": "Equal",
    "lt": "Less",
    "le": "LessOrEqual",
    "gt": "Greater",
    "ge": "GreaterOrEqual",
    "where": "Where",
    "matmul": "MatMul",
}


def _direct(op_type: str) -> Lowering:
    def lower(e: Emitter, node: Node) -> None:
        e.op(op_type, _names(node.inputs), node.output.name)

    return lower


for _op, _op_type in _DIRECT.items():
    lowering(_op)(_direct(_op_type))


@lowering("rsqrt")
def _rsqrt(e: Emitter, node: Node) -> None:
    e.op("Reciprocal", [e.op("Sqrt", [node.inputs[0].name])], node.output.name)


@lowering("silu")
def _silu(e: Emitter, node: Node) -> None:
    x = node.inputs[0].name
    e.op("Mul", [x, e.op("Sigmoid", [x])], node.output.name)


@lowering("cumsum")
def _cumsum(e: Emitter, node: Node) -> None:
    axis = e.tensor(torch.tensor(node.attrs["axis"], dtype=torch.int64), "axis")
    e.op("CumSum", [node.inputs[0].name, axis], node.output.name)


@lowering("ne")
def _ne(e: Emitter, node: Node) -> None:
    e.op("Not", [e.op("Equal", _names(node.inputs))], node.output.name)


def _as_bool(e: Emitter, v: Value) -> str:
    """ONNX logical ops take bool only; torch's treat any nonzero value as true."""
    return v.name if v.dtype == "bool" else e.op("Cast", [v.name], to=TensorProto.BOOL)


@lowering("logical_and", "logical_or", "logical_not")
def _logical(e: Emitter, node: Node) -> None:
    op_type = {"logical_and": "And", "logical_or": "Or", "logical_not": "Not"}[node.op]
    out = node.output
    inputs = [_as_bool(e, v) for v in node.inputs]
    if out.dtype == "bool":
        e.op(op_type, inputs, out.name)
    else:
        e.op("Cast", [e.op(op_type, inputs)], out.name, to=ONNX_DTYPES[out.dtype])


@lowering("cast")
def _cast(e: Emitter, node: Node) -> None:
    e.op("Cast", [node.inputs[0].name], node.output.name, to=ONNX_DTYPES[node.attrs["dtype"]])


@lowering("constant")
def _constant(e: Emitter, node: Node) -> None:
    """A Constant for one element; ConstantOfShape otherwise, so a big fill stays small."""
    out = node.output
    dtype = TORCH_DTYPES[out.dtype]
    if out.type.numel == 1:
        value = tensor_proto("value", torch.full(out.shape, node.attrs["value"], dtype=dtype))
        e.op("Constant", [], out.name, value=value)
    else:
        value = tensor_proto("value", torch.full((1,), node.attrs["value"], dtype=dtype))
        e.op("ConstantOfShape", [e.ints(out.shape, "shape")], out.name, value=value)


# -- reductions ---------------------------------------------------------------------------------


@lowering("reduce_sum", "reduce_mean", "reduce_max")
def _reduce(e: Emitter, node: Node) -> None:
    op_type = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax"}
    axes = e.ints(node.attrs["axes"], "axes")
    keepdims = int(node.attrs["keepdim"])
    e.op(op_type[node.op], [node.inputs[0].name, axes], node.output.name, keepdims=keepdims)


@lowering("var")
def _var(e: Emitter, node: Node) -> None:
    """Two-pass variance, mean((x - mean(x))²), as torch computes it; no ONNX op does this."""
    x = node.inputs[0]
    axes = e.ints(node.attrs["axes"], "axes")
    keepdims = int(node.attrs["keepdim"])
    centred = e.op("Sub", [x.name, e.op("ReduceMean", [x.name, axes], keepdims=1)])
    squares = e.op("Mul", [centred, centred])
    correction = node.attrs["correction"]
    if correction == 0:
        e.op("ReduceMean", [squares, axes], node.output.name, keepdims=keepdims)
        return
    count = prod(x.shape[a] for a in node.attrs["axes"]) - correction
    total = e.op("ReduceSum", [squares, axes], keepdims=keepdims)
    divisor = e.tensor(torch.tensor(float(count), dtype=x.type.torch_dtype), "count")
    e.op("Div", [total, divisor], node.output.name)


@lowering("softmax", "log_softmax")
def _softmax(e: Emitter, node: Node) -> None:
    op_type = "Softmax" if node.op == "softmax" else "LogSoftmax"
    e.op(op_type, [node.inputs[0].name], node.output.name, axis=node.attrs["axis"])


# -- data movement ------------------------------------------------------------------------------


@lowering("reshape")
def _reshape(e: Emitter, node: Node) -> None:
    # allowzero: an IR shape is literal, a 0 means an empty axis, not "copy the input's".
    shape = e.ints(node.attrs["shape"], "shape")
    e.op("Reshape", [node.inputs[0].name, shape], node.output.name, allowzero=1)


@lowering("transpose")
def _transpose(e: Emitter, node: Node) -> None:
    e.op("Transpose", [node.inputs[0].name], node.output.name, perm=node.attrs["perm"])


@lowering("expand")
def _expand(e: Emitter, node: Node) -> None:
    e.op("Expand", [node.inputs[0].name, e.ints(node.attrs["shape"], "shape")], node.output.name)


@lowering("slice")
def _slice(e: Emitter, node: Node) -> None:
    a = node.attrs
    bounds = [e.ints([a[k]], k) for k in ("start", "end", "axis", "step")]
    e.op("Slice", [node.inputs[0].name, *bounds], node.output.name)


@lowering("concat")
def _concat(e: Emitter, node: Node) -> None:
    e.op("Concat", _names(node.inputs), node.output.name, axis=node.attrs["axis"])


@lowering("embedding")
def _embedding(e: Emitter, node: Node) -> None:
    table, ids = node.inputs
    e.op("Gather", [table.name, ids.name], node.output.name, axis=0)


# -- fused ops ----------------------------------------------------------------------------------


@lowering("linear")
def _linear(e: Emitter, node: Node) -> None:
    """Gemm with transB=1 on rows flattened to 2-D.

    ORT packs a constant B once at session start, transposing it then, so the [out, in] weight
    is stored as is: no transposed copy (a weight tied to the embedding is stored once) and no
    run-time Transpose. Measured on par with MatMul on a pre-transposed weight (GPT-2 shapes).
    The flatten and unflatten Reshapes are free between kernels, but a Reshape producing a
    graph output copies it (25 ms for 111M's [1, 512, 50257] logits), so a bias-less linear
    producing an output (the LM head) is com.microsoft.FusedMatMul(transB=1) on N-D rows.
    """
    x, out = node.inputs[0], node.output
    if len(node.inputs) == 2 and x.type.rank > 2 and e.is_graph_output(out):
        e.op("FusedMatMul", _names(node.inputs), out.name, domain=MS_DOMAIN, transB=1)
        return
    rows = [prod(x.shape[:-1]), x.shape[-1]]
    x2d = x.name
    if x.type.rank != 2:
        x2d = e.op("Reshape", [x.name, e.ints(rows, "rows")], allowzero=1)
    gemm_out = out.name if x.type.rank == 2 else None
    y = e.op("Gemm", [x2d, *_names(node.inputs[1:])], gemm_out, transB=1)
    if x.type.rank != 2:
        e.op("Reshape", [y, e.ints(out.shape, "shape")], out.name, allowzero=1)


@lowering("layer_norm")
def _layer_norm(e: Emitter, node: Node) -> None:
    """LayerNormalization. A residual add before it stays a separate Add: ORT 1.32's CPU
    com.microsoft.SkipLayerNormalization, which fuses the two, measured 3x slower than Add +
    LayerNormalization (1 x 512 x 768, 2 threads: 2.2 ms against 0.7 ms)."""
    x = node.inputs[0]
    scale = node.inputs[1].name if len(node.inputs) > 1 else None
    if scale is None:  # LayerNormalization requires a scale
        scale = e.tensor(torch.ones(x.shape[-1], dtype=x.type.torch_dtype), "ones")
    inputs = [x.name, scale, *_names(node.inputs[2:])]
    e.op("LayerNormalization", inputs, node.output.name, axis=-1, epsilon=node.attrs["eps"])


@lowering("rms_norm")
def _rms_norm(e: Emitter, node: Node) -> None:
    """RMSNormalization (opset 23)."""
    x = node.inputs[0]
    scale = node.inputs[1].name if len(node.inputs) > 1 else None
    if scale is None:  # RMSNormalization requires a scale
        scale = e.tensor(torch.ones(x.shape[-1], dtype=x.type.torch_dtype), "ones")
    e.op("RMSNormalization", [x.name, scale], node.output.name, axis=-1, epsilon=node.attrs["eps"])


@lowering("rotary_embedding")
def _rotary_embedding(e: Emitter, node: Node) -> None:
    """RotaryEmbedding (opset 23) on the 3-D input; [seq, r/2] tables are indexed by position
    ids 0..seq-1 (the op takes tables without ids only per batch row)."""
    x, cos, sin = node.inputs
    b, t, _ = x.shape
    inputs = [x.name, cos.name, sin.name]
    if cos.type.rank == 2:
        positions = torch.arange(t, dtype=torch.int64).expand(b, t).contiguous()
        inputs.append(e.tensor(positions, "positions"))
    e.op(
        "RotaryEmbedding",
        inputs,
        node.output.name,
        num_heads=node.attrs["num_heads"],
        rotary_embedding_dim=node.attrs["rotary_dim"],
        interleaved=int(node.attrs["interleaved"]),
    )


@lowering("swiglu")
def _swiglu(e: Emitter, node: Node) -> None:
    """One Gemm on the gate and up weights stacked into one [2f, in] initializer (made here),
    then Split, and silu(gate)·up as Sigmoid and two Muls."""
    x, w_gate, w_up = node.inputs
    out = node.output
    f = w_gate.shape[0]
    weights = e.op("Concat", [w_gate.name, w_up.name], axis=0)
    rows = [prod(x.shape[:-1]), x.shape[-1]]
    x2d = e.op("Reshape", [x.name, e.ints(rows, "rows")], allowzero=1)
    both = e.op("Gemm", [x2d, weights], transB=1)
    gate, up = e.fresh("gate"), e.fresh("up")
    e.op("Split", [both, e.ints([f, f], "split")], [gate, up], axis=1)
    gated = e.op("Mul", [e.op("Mul", [gate, e.op("Sigmoid", [gate])]), up])
    e.op("Reshape", [gated, e.ints(out.shape, "shape")], out.name, allowzero=1)


@lowering("gelu")
def _gelu(e: Emitter, node: Node) -> None:
    approximate = node.attrs["approximate"]
    e.op("Gelu", [node.inputs[0].name], node.output.name, approximate=approximate)


@lowering("attention")
def _attention(e: Emitter, node: Node) -> None:
    """ONNX Attention-23 on the 3-D [batch, seq, heads·d_head] inputs (key-value heads shared by
    kv_num_heads); long causal self-attention without a mask goes to com.microsoft's
    GroupQueryAttention instead.

    Attention-23 is the fastest correct choice in ORT 1.32 on CPU at short lengths: causal
    attention alone (768 wide, 12 heads, 1 thread) takes 9.9 ms at seq 512 against 10.7 ms for
    com.microsoft.MultiHeadAttention and 13.7 ms decomposed into primitives (ORT does not
    re-fuse those); it is also the standard op. GroupQueryAttention computes only the causal
    half of the scores: 12 query and 4 key-value heads of 64, 2 threads, medians of 60
    interleaved rounds on a loaded machine (bench/ort_contrib_ops.py --ops attention), it took
    1.03x Attention-23's time at seq 128, 0.98x at 256, 0.77x at 512 and 0.84x at 1024.
    """
    q, k = node.inputs[0], node.inputs[1]
    t, s = q.shape[1], k.shape[1]
    a = node.attrs
    long = a["causal"] and t == s >= GQA_FROM and len(node.inputs) == 3 and not a["alibi_slopes"]
    if long and q.shape[2] // a["num_heads"] % 8 == 0:  # ORT's CPU kernel: head sizes 8·n only
        _group_query_attention(e, node)
        return
    # ORT aligns is_causal top-left (the ONNX spec); the IR aligns bottom-right (as torch). They
    # agree when t == s; otherwise the causal mask goes in as an explicit bias, as do sliding
    # windows and ALiBi, which the op lacks.
    is_causal = a["causal"] and t == s and not a["window"]
    bias = attention_bias(e, node, q, k, _mask(node, 3), causal_bias=not is_causal)
    e.op(
        "Attention",
        [*_names(node.inputs[:3]), *([bias] if bias else [])],
        node.output.name,
        q_num_heads=a["num_heads"],
        kv_num_heads=a["num_kv_heads"],
        is_causal=int(is_causal),
        scale=float(a["scale"]),
    )


def _group_query_attention(e: Emitter, node: Node) -> None:
    """com.microsoft.GroupQueryAttention: causal self-attention with no past, each sequence
    `seq` keys long (seqlens_k holds lengths minus one); its local_window_size counts the keys
    a query sees, itself included, as the IR's window."""
    q = node.inputs[0]
    b, t = q.shape[:2]
    a = node.attrs
    lengths = e.tensor(torch.full((b,), t - 1, dtype=torch.int32), "seqlens_k")
    total = e.tensor(torch.tensor(t, dtype=torch.int32), "total_sequence_length")
    e.op(
        "GroupQueryAttention",
        [*_names(node.inputs[:3]), "", "", lengths, total],
        node.output.name,
        domain=MS_DOMAIN,
        num_heads=a["num_heads"],
        kv_num_heads=a["num_kv_heads"],
        scale=float(a["scale"]),
        local_window_size=a["window"] or -1,
    )


def _mask(node: Node, index: int) -> Value | None:
    """The optional additive-mask operand of an attention-family node, at `index`."""
    return node.inputs[index] if len(node.inputs) > index else None


def attention_bias(
    e: Emitter, node: Node, q: Value, k: Value, mask: Value | None, *, causal_bias: bool
) -> str | None:
    """The additive mask as a [b|1, h|1, t, s] tensor of q's dtype, plus the bias of the node's
    alibi_slopes and, when asked, of causal and window (cgc.ir.ops.nn.position_bias).

    ORT's attention kernels broadcast the batch and head axes of the mask but not the last two.
    They also zero a query whose highest score is the lowest finite float, their own mask
    sentinel, where the IR adds a finite mask like any number: Hugging Face's eager padding mask
    (finfo.min) leaves a fully padded query attending evenly to every key. So mask entries at
    that lowest value are raised a hair, which changes no weight; -inf still masks.
    """
    t, s = q.shape[1], k.shape[1]
    bias = None
    if mask is not None:
        bias = mask.name
        if mask.dtype != q.dtype:
            bias = e.op("Cast", [bias], to=ONNX_DTYPES[q.dtype])
        dtype = q.type.torch_dtype
        lowest = torch.finfo(dtype).min
        at_lowest = e.op("Equal", [bias, e.tensor(torch.tensor(lowest, dtype=dtype), "lowest")])
        above = e.tensor(torch.tensor(lowest * (1 - torch.finfo(dtype).eps), dtype=dtype), "above")
        bias = e.op("Where", [at_lowest, above, bias])
        full = tuple(torch.broadcast_shapes(mask.shape, (1, 1, t, s)))
        if full != mask.shape:
            bias = e.op("Expand", [bias, e.ints(full, "mask_shape")])
    a = node.attrs
    causal = a["causal"] and causal_bias
    fixed = position_bias(
        t, s, causal=causal, window=a["window"] if causal else 0, alibi_slopes=a["alibi_slopes"],
        dtype=q.type.torch_dtype,
    )  # fmt: skip
    if fixed is not None:
        fixed = e.tensor(fixed.unsqueeze(0), "causal_bias" if causal else "alibi_bias")
        bias = fixed if bias is None else e.op("Add", [bias, fixed])
    return bias


@lowering("qkv_attention")
def _qkv_attention(e: Emitter, node: Node) -> None:
    """com.microsoft.Attention: the packed projection and attention in one kernel.

    It projects x straight into its per-head layout, so neither the [b, t, 3·e] projection nor
    its three slices are materialised. On 111M's shapes (2 threads) projection and attention
    took about 20% less time than Gemm + Slice + Attention-23 at seq 512, and as long at 128.
    Its weight is [in, 3·e]: the Transpose of the IR's [3·e, in] weight is folded into a
    constant when ORT loads the model.

    ORT computes every query against every key and masks afterwards, so long causal sequences
    run in blocks of QUERY_BLOCK queries: each block gets the keys and values of the blocks
    before it as the kernel's past state (its causal mask then aligns bottom-right), and the
    masked upper triangle of the other blocks is never computed. One 111M layer (2 threads):
    15.6 -> 14.5 ms at seq 512, 44.4 -> 35.3 ms at 1024; no faster at 256 and below.
    """
    x, w = node.inputs[0], node.inputs[1]
    weight = e.op("Transpose", [w.name], perm=[1, 0])
    bias = node.inputs[2].name if len(node.inputs) == 3 else ""
    attrs = {
        "domain": MS_DOMAIN,
        "num_heads": node.attrs["num_heads"],
        "unidirectional": int(node.attrs["causal"]),  # q, k of one length: no alignment issue
        "scale": float(node.attrs["scale"]),
    }
    t = x.shape[1]
    blocks = t // QUERY_BLOCK if node.attrs["causal"] else 1
    if blocks < 2:
        e.op("Attention", [x.name, weight, *([bias] if bias else [])], node.output.name, **attrs)
        return
    outputs, past = [], []
    for i in range(blocks):
        bounds = [e.ints([t * i // blocks], "start"), e.ints([t * (i + 1) // blocks], "end")]
        queries = e.op("Slice", [x.name, *bounds, e.ints([1], "axis")])
        present = e.fresh("present")  # keys and values so far: [2, b, heads, seq, d_head]
        inputs = [queries, weight, bias, "", *past]
        outputs.append(e.op("Attention", inputs, [e.fresh("block"), present], **attrs))
        past = [present]
    e.op("Concat", outputs, node.output.name, axis=1)


# -- losses -------------------------------------------------------------------------------------


def _ignored_rows(e: Emitter, targets: Value, ignore_index: int) -> tuple[str, str]:
    """(ignored, index): which rows are ignored, and the targets with those rows sent to 0 so
    that every index is in range for GatherElements / ScatterElements."""
    dtype = targets.type.torch_dtype
    ignored = e.op("Equal", [targets.name, e.tensor(torch.tensor(ignore_index, dtype=dtype), "ii")])
    index = e.op("Where", [ignored, e.tensor(torch.tensor(0, dtype=dtype), "zero"), targets.name])
    return ignored, e.op("Unsqueeze", [index, e.ints([1], "axis")])


def _valid_count(e: Emitter, ignored: str, dtype: int) -> str:
    """How many rows count, as a 0-d float (exact below 2²⁴ rows in f32)."""
    valid = e.op("Cast", [e.op("Not", [ignored])], to=dtype)
    return e.op("ReduceSum", [valid], keepdims=0)


@lowering("cross_entropy")
def _cross_entropy(e: Emitter, node: Node) -> None:
    """LogSoftmax, GatherElements of the targets, masked sum (over the valid count for "mean").

    Standard ops only. ORT's SoftmaxCrossEntropyLoss kernel agrees with torch as closely (both
    2.1e-6 from float64 on [256, 50257]) but takes 2.5x as long: 89 ms against 36 ms (medians,
    2 threads, bench/cross_entropy_ort.py).
    """
    logits, targets = node.inputs
    ignored, index = _ignored_rows(e, targets, node.attrs["ignore_index"])
    logp = e.op("LogSoftmax", [logits.name], axis=1)
    picked = e.op("Squeeze", [e.op("GatherElements", [logp, index], axis=1), e.ints([1], "axis")])
    zero = e.tensor(torch.zeros((), dtype=logits.type.torch_dtype), "zero")
    total = e.op("Neg", [e.op("ReduceSum", [e.op("Where", [ignored, zero, picked])], keepdims=0)])
    if node.attrs["reduction"] == "sum":
        e.op("Identity", [total], node.output.name)
        return
    e.op("Div", [total, _valid_count(e, ignored, ONNX_DTYPES[logits.dtype])], node.output.name)


@lowering("cross_entropy_grad")
def _cross_entropy_grad(e: Emitter, node: Node) -> None:
    """Softmax, minus 1 at each counted target (ScatterElements, reduction add), times the
    per-row scale dloss/count (dloss for "sum"; 0 on ignored rows)."""
    logits, targets, dloss = node.inputs
    dtype = logits.type.torch_dtype
    ignored, index = _ignored_rows(e, targets, node.attrs["ignore_index"])
    zero, minus_one = (
        e.tensor(torch.tensor(v, dtype=dtype), h) for v, h in ((0, "zero"), (-1, "m1"))
    )
    step = e.op("Unsqueeze", [e.op("Where", [ignored, zero, minus_one]), e.ints([1], "axis")])
    probs = e.op("Softmax", [logits.name], axis=1)
    diff = e.op("ScatterElements", [probs, index, step], axis=1, reduction="add")
    scale = dloss.name
    if node.attrs["reduction"] == "mean":
        scale = e.op("Div", [scale, _valid_count(e, ignored, ONNX_DTYPES[logits.dtype])])
    rows = e.op("Unsqueeze", [e.op("Where", [ignored, zero, scale]), e.ints([1], "axis")])
    e.op("Mul", [diff, rows], node.output.name)


# -- random -------------------------------------------------------------------------------------


def _u64(e: Emitter, value: int, hint: str) -> str:
    """A uint64 scalar constant (not an IR dtype, so not through Emitter.tensor)."""
    name = e.fresh(hint)
    e.initializers.append(helper.make_tensor(name, TensorProto.UINT64, [], [value]))
    return name


@lowering("dropout")
def _dropout(e: Emitter, node: Node) -> None:
    """Philox4x32-10 in uint64 lanes, the same integer steps as the reference (cgc.ir.ops.random),
    so ONNX Runtime draws the interpreter's mask bit for bit; then Where(keep, x·scale, 0)."""
    x, seed = node.inputs
    p, numel = node.attrs["p"], x.type.numel
    groups = -(-numel // LANES)
    mask, shift = _u64(e, MASK32, "mask32"), _u64(e, 32, "shift32")

    def lo(v: str) -> str:
        return e.op("BitwiseAnd", [v, mask])

    def hi(v: str) -> str:
        return e.op("BitShift", [v, shift], direction="RIGHT")

    bits = e.op("Cast", [seed.name], to=TensorProto.UINT64)  # two's complement bits kept
    key = [lo(bits), hi(bits)]
    zero = _u64(e, 0, "zero")
    start, limit, delta = (
        e.tensor(torch.tensor(v), h) for v, h in ((0, "start"), (groups, "n"), (1, "d"))
    )
    counter = e.op("Cast", [e.op("Range", [start, limit, delta])], to=TensorProto.UINT64)
    c = [counter, _u64(e, node.attrs["stream"], "stream"), zero, zero]
    for r in range(PHILOX_ROUNDS):
        k = [
            lo(e.op("Add", [key[i], _u64(e, r * PHILOX_W[i], f"w{i}")])) if r else key[i]
            for i in (0, 1)
        ]
        p0 = e.op("Mul", [c[0], _u64(e, PHILOX_M[0], "m0")])
        p1 = e.op("Mul", [c[2], _u64(e, PHILOX_M[1], "m1")])
        c = [
            e.op("BitwiseXor", [e.op("BitwiseXor", [hi(p1), c[1]]), k[0]]),
            lo(p1),
            e.op("BitwiseXor", [e.op("BitwiseXor", [hi(p0), c[3]]), k[1]]),
            lo(p0),
        ]
    axis = e.ints([1], "axis")
    words = e.op("Concat", [e.op("Unsqueeze", [lane, axis]) for lane in c], axis=1)
    words = e.op("Reshape", [words, e.ints([groups * LANES], "flat")])
    if groups * LANES != numel:
        words = e.op("Slice", [words, e.ints([0], "start"), e.ints([numel], "end")])
    words = e.op("Reshape", [words, e.ints(x.shape, "shape")], allowzero=1)
    keep = e.op("GreaterOrEqual", [words, _u64(e, keep_threshold(p), "threshold")])
    dtype = x.type.torch_dtype
    scaled = e.op("Mul", [x.name, e.tensor(torch.tensor(keep_scale(p), dtype=dtype), "scale")])
    e.op("Where", [keep, scaled, e.tensor(torch.zeros((), dtype=dtype), "zero")], node.output.name)


# -- training: the training forward of attention, backward ops, pad -----------------------------
# The plain onnxruntime package has no gradient kernels (com.microsoft GeluGrad,
# LayerNormalizationGrad, SoftmaxGrad_13 and GatherGrad fail to load in ORT 1.32), so these are
# standard ops plus com.microsoft.FusedMatMul, whose transA/transB and alpha save the
# transposes and scalings of the attention backward.


@lowering("pad")
def _pad(e: Emitter, node: Node) -> None:
    """Pad for zeros before and after; interior zeros (a strided slice's cotangent) come from a
    new axis after `axis`, padded to the stride and merged into it, the surplus trimmed."""
    x, a = node.inputs[0], node.attrs
    rank, axis = x.type.rank, a["axis"] % x.type.rank
    n, step = x.shape[axis], a["interior"] + 1

    def pads(before: int, after: int, size: int = rank, at: int = axis) -> str:
        values = [0] * (2 * size)
        values[at], values[size + at] = before, after
        return e.ints(values, "pads")

    if step == 1 or n <= 1:
        e.op("Pad", [x.name, pads(a["before"], a["after"])], node.output.name)
        return
    spread = e.op("Unsqueeze", [x.name, e.ints([axis + 1], "axes")])
    spread = e.op("Pad", [spread, pads(0, step - 1, rank + 1, axis + 1)])
    merged = [*x.shape[:axis], n * step, *x.shape[axis + 1 :]]
    spread = e.op("Reshape", [spread, e.ints(merged, "merged")], allowzero=1)
    # n·step elements hold step - 1 trailing zeros more than the strided copy: a negative pad.
    e.op("Pad", [spread, pads(a["before"], a["after"] - (step - 1))], node.output.name)


@lowering("embedding_grad")
def _embedding_grad(e: Emitter, node: Node) -> None:
    """ScatterND with reduction=add of the cotangent rows into the accumulator (or zeros)."""
    ids, dy = node.inputs[:2]
    out = node.output
    if len(node.inputs) == 3:
        table = node.inputs[2].name
    else:
        zero = tensor_proto("value", torch.zeros(1, dtype=out.type.torch_dtype))
        table = e.op("ConstantOfShape", [e.ints(out.shape, "shape")], value=zero)
    index = ids.name if ids.dtype == "i64" else e.op("Cast", [ids.name], to=TensorProto.INT64)
    index = e.op("Unsqueeze", [index, e.ints([-1], "axes")])
    rows = dy.name
    padding = node.attrs["padding_idx"]
    if padding >= 0:  # lookups of the padding row add nothing: their rows scatter as zeros
        pad = e.op("Equal", [index, e.ints([padding], "padding_idx")])
        zero = e.tensor(torch.zeros((), dtype=dy.type.torch_dtype), "zero")
        rows = e.op("Where", [pad, zero, rows])
    e.op("ScatterND", [table, index, rows], out.name, reduction="add")


def _split(e: Emitter, x: Value, heads: int, repeat: int = 1) -> str:
    """[b, s, heads·d] -> [b, heads·repeat, s, d], each head `repeat` times (shared keys)."""
    b, s, width = x.shape
    d = width // heads
    x4 = e.op("Reshape", [x.name, e.ints([b, s, heads, d], "heads")], allowzero=1)
    split = e.op("Transpose", [x4], perm=[0, 2, 1, 3])
    if repeat == 1:
        return split
    grouped = e.op("Reshape", [split, e.ints([b, heads, 1, s, d], "group")], allowzero=1)
    grouped = e.op("Expand", [grouped, e.ints([b, heads, repeat, s, d], "repeat")])
    return e.op("Reshape", [grouped, e.ints([b, heads * repeat, s, d], "repeated")], allowzero=1)


def _split_kv(e: Emitter, node: Node, x: Value) -> str:
    """k or v of an attention-family node split into heads, repeated for the query heads."""
    kv_heads = node.attrs["num_kv_heads"]
    return _split(e, x, kv_heads, node.attrs["num_heads"] // kv_heads)


def _merge_groups(e: Emitter, node: Node, x: str, out: Value) -> None:
    """A shared key or value head's gradient: summed over the query heads it serves, merged."""
    heads, kv_heads = node.attrs["num_heads"], node.attrs["num_kv_heads"]
    if heads != kv_heads:
        b, s, width = out.shape
        x = e.op("Reshape", [x, e.ints([b, kv_heads, heads // kv_heads, s, width // kv_heads],
                                      "groups")], allowzero=1)  # fmt: skip
        x = e.op("ReduceSum", [x, e.ints([2], "group_axis")], keepdims=0)
    _merge(e, x, out)


def _merge(e: Emitter, x: str, out: Value) -> None:
    """[b, heads, s, d] -> [b, s, heads·d], written to `out`."""
    merged = e.op("Transpose", [x], perm=[0, 2, 1, 3])
    e.op("Reshape", [merged, e.ints(out.shape, "shape")], out.name, allowzero=1)


def _scores(e: Emitter, node: Node, q: Value, k: Value, mask: Value | None) -> tuple[str, str, str]:
    """The per-head scores scale·q·kᵀ + bias, [b, h, t, s], and the split q and k."""
    heads, scale = node.attrs["num_heads"], float(node.attrs["scale"])
    qh = _split(e, q, heads)
    kh = _split_kv(e, node, k)
    scores = e.op("FusedMatMul", [qh, kh], domain=MS_DOMAIN, transB=1, alpha=scale)
    bias = attention_bias(e, node, q, k, mask, causal_bias=True)
    return (e.op("Add", [scores, bias]) if bias else scores), qh, kh


def _masked_rows(node: Node, q: Value, k: Value, mask: Value | None) -> bool:
    """Whether a query may see no key (its log-sum-exp is then -inf until fixed to +inf)."""
    return mask is not None or (node.attrs["causal"] and q.shape[1] > k.shape[1])


@lowering("attention_lse")
def _attention_lse(e: Emitter, node: Node) -> None:
    """The scores once, their Softmax, weights·v, and lse = max(scores) - log(max(weights)).

    Computing the output from the same scores costs no second q·kᵀ, which ONNX Attention (no
    log-sum-exp output) plus a separate log-sum-exp would. ReduceLogSumExp is not used: it took
    4.5 ms on 111M's [1, 12, 128, 128] scores where Softmax and two ReduceMax take 0.4 ms; the
    weight of the largest score is exp(max - lse), so its log gives lse back.
    """
    q, k, v = node.inputs[:3]
    mask = _mask(node, 3)
    y, lse = node.outputs
    scores, _, _ = _scores(e, node, q, k, mask)
    last = e.ints([-1], "last")
    weights = e.op("Softmax", [scores], axis=-1)
    top = e.op("ReduceMax", [scores, last], keepdims=1)
    if _masked_rows(node, q, k, mask):  # no key at all: zero weights, not NaN, and lse +inf
        zero = e.tensor(torch.tensor(0.0, dtype=q.type.torch_dtype), "zero")
        weights = e.op("Where", [e.op("IsNaN", [weights]), zero, weights])
        inf = e.tensor(torch.tensor(float("inf"), dtype=q.type.torch_dtype), "inf")
        top = e.op("Where", [e.op("IsInf", [top], detect_positive=0), inf, top])
    log_top_weight = e.op("Log", [e.op("ReduceMax", [weights, last], keepdims=1)])
    _merge(e, e.op("MatMul", [weights, _split_kv(e, node, v)]), y)
    full = e.op("Sub", [top, log_top_weight])
    e.op("Reshape", [full, e.ints(lse.shape, "lse_shape")], lse.name, allowzero=1)


@lowering("attention_grad")
def _attention_grad(e: Emitter, node: Node) -> None:
    """FlashAttention's backward with the weights recomputed from the log-sum-exp:
    P = exp(S - lse), dV = Pᵀ·dY, dS = P·(dY·Vᵀ - rowsum(dY·Y)), dQ = s·dS·K, dK = s·dSᵀ·Q."""
    dy, q, k, v, y, lse = node.inputs[:6]
    dq, dk, dv = node.outputs
    heads, scale = node.attrs["num_heads"], float(node.attrs["scale"])
    scores, qh, kh = _scores(e, node, q, k, _mask(node, 6))
    top = e.op("Unsqueeze", [lse.name, e.ints([-1], "axes")])
    weights = e.op("Exp", [e.op("Sub", [scores, top])])
    dyh = _split(e, dy, heads)
    _merge_groups(e, node, e.op("FusedMatMul", [weights, dyh], domain=MS_DOMAIN, transA=1), dv)
    dweights = e.op("FusedMatMul", [dyh, _split_kv(e, node, v)], domain=MS_DOMAIN, transB=1)
    rowdot = e.op(
        "ReduceSum", [e.op("Mul", [dyh, _split(e, y, heads)]), e.ints([-1], "axes")], keepdims=1
    )
    dscores = e.op("Mul", [weights, e.op("Sub", [dweights, rowdot])])
    _merge(e, e.op("FusedMatMul", [dscores, kh], domain=MS_DOMAIN, alpha=scale), dq)
    dk_heads = e.op("FusedMatMul", [dscores, qh], domain=MS_DOMAIN, transA=1, alpha=scale)
    _merge_groups(e, node, dk_heads, dk)


@lowering("layer_norm_grad")
def _layer_norm_grad(e: Emitter, node: Node) -> None:
    """x̂ and 1/σ from LayerNormalization's own outputs (unit gain), then
    dx = (g - mean(g) - x̂·mean(g·x̂))/σ with g = dy·w, dw = Σ dy·x̂, db = Σ dy over rows."""
    dy, x = node.inputs[:2]
    dx, dw, db = node.outputs
    width = x.shape[-1]
    ones = e.tensor(torch.ones(width, dtype=x.type.torch_dtype), "ones")
    xhat, rstd = e.fresh("xhat"), e.fresh("rstd")
    e.op(
        "LayerNormalization",
        [x.name, ones],
        [xhat, e.fresh("mean"), rstd],
        axis=-1,
        epsilon=node.attrs["eps"],
    )
    g = e.op("Mul", [dy.name, node.inputs[2].name]) if len(node.inputs) == 3 else dy.name
    last = e.ints([-1], "last")
    mean_g = e.op("ReduceMean", [g, last], keepdims=1)
    mean_gx = e.op("ReduceMean", [e.op("Mul", [g, xhat]), last], keepdims=1)
    inner = e.op("Sub", [e.op("Sub", [g, mean_g]), e.op("Mul", [xhat, mean_gx])])
    e.op("Mul", [inner, rstd], dx.name)
    rows = e.ints(range(x.type.rank - 1), "rows")
    e.op("ReduceSum", [e.op("Mul", [dy.name, xhat]), rows], dw.name, keepdims=0)
    e.op("ReduceSum", [dy.name, rows], db.name, keepdims=0)


@lowering("gelu_grad")
def _gelu_grad(e: Emitter, node: Node) -> None:
    """dy·GELU'(x) in elementwise ops: Φ(x) + x·φ(x) (erf), or the tanh form's derivative."""
    dy, x = node.inputs
    dtype = x.type.torch_dtype

    def c(value: float) -> str:
        return e.tensor(torch.tensor(value, dtype=dtype), "c")

    if node.attrs["approximate"] == "tanh":
        # t = tanh(k·x·(1 + a·x²)); GELU' = ½(1 + t) + ½·k·x·(1 - t²)·(1 + 3a·x²)
        k, a = math.sqrt(2.0 / math.pi), 0.044715
        x2 = e.op("Mul", [x.name, x.name])
        t = e.op("Tanh", [e.op("Mul", [x.name, e.op("Add", [e.op("Mul", [x2, c(k * a)]), c(k)])])])
        left = e.op("Add", [e.op("Mul", [t, c(0.5)]), c(0.5)])
        slope = e.op("Sub", [c(1.0), e.op("Mul", [t, t])])
        growth = e.op("Add", [e.op("Mul", [x2, c(1.5 * k * a)]), c(0.5 * k)])
        right = e.op("Mul", [e.op("Mul", [x.name, slope]), growth])
    else:
        # Φ(x) = ½ + ½·erf(x/√2); x·φ(x) = x·exp(log(1/√(2π)) - x²/2)
        u = e.op("Mul", [x.name, c(1.0 / math.sqrt(2.0))])
        left = e.op("Add", [e.op("Mul", [e.op("Erf", [u]), c(0.5)]), c(0.5)])
        log_density = e.op("Sub", [c(-0.5 * math.log(2.0 * math.pi)), e.op("Mul", [u, u])])
        right = e.op("Mul", [x.name, e.op("Exp", [log_density])])
    e.op("Mul", [dy.name, e.op("Add", [left, right])], node.output.name)


@lowering("cached_attention")
def _cached_attention(e: Emitter, node: Node) -> None:
    """com.microsoft.GroupQueryAttention with its past and present caches sharing one buffer.

    The IR cache layout, [B, G, C, D] with sequence b's tokens in slots 0 ... past[b] + T - 1,
    is GroupQueryAttention's BNSH cache (kv_num_heads G). When the caller binds one OrtValue as
    both a cache input and the matching output (IO binding), the kernel writes the new keys and
    values into it in place and attends to the first past[b] + T slots: no copy of the cache per
    step. Its seqlens_k is the index of each sequence's last token (past + T - 1, int32) and
    total_sequence_length the longest such length; its local_window_size is the IR's window.
    ONNX Attention-23 and MultiHeadAttention instead return a present cache grown by T, a copy
    of the whole cache every step. ORT's CPU kernel takes T > 1 new tokens only from an empty
    cache (prefill) or for batch 1, head sizes that are multiples of 8, and no ALiBi; the rest
    take _cached_attention_scatter.
    """
    q, k, v, k_cache, v_cache, past = node.inputs
    t = q.shape[1]
    a = node.attrs
    if k_cache.shape[-1] % 8 or a["alibi_slopes"]:
        _cached_attention_scatter(e, node)
        return
    last = e.op("Add", [past.name, e.ints([t - 1], "last")])
    seqlens = e.op("Cast", [last], to=TensorProto.INT32)
    total = e.op("Add", [e.op("ReduceMax", [last], keepdims=0), e.ints([1], "one")])
    total = e.op("Cast", [e.op("Reshape", [total, e.ints([], "scalar")])], to=TensorProto.INT32)
    e.op(
        "GroupQueryAttention",
        [q.name, k.name, v.name, k_cache.name, v_cache.name, seqlens, total],
        _names(node.outputs),
        domain=MS_DOMAIN,
        num_heads=a["num_heads"],
        kv_num_heads=a["num_kv_heads"],
        scale=float(a["scale"]),
        local_window_size=a["window"] or -1,
    )


def _cached_attention_scatter(e: Emitter, node: Node) -> None:
    """cached_attention in standard ops: ScatterElements writes the new keys and values into
    the caches (in place when their buffers are bound as input and output: ORT skips copying a
    tensor onto itself), then Attention-23 attends to the whole cache under a [B, 1, T, C]
    mask of the slots each query sees (with ALiBi, the [B, H, T, C] bias on them)."""
    q, k, v, k_cache, v_cache, past = node.inputs
    b, t, width = q.shape
    kv_heads, capacity, d = k_cache.shape[1:]
    a = node.attrs
    out, k_next, v_next = _names(node.outputs)

    def split(x: str, heads: int) -> str:  # [B, T, H·D] -> [B, H, T, D]
        x = e.op("Reshape", [x, e.ints([b, t, heads, d], "heads")], allowzero=1)
        return e.op("Transpose", [x], perm=[0, 2, 1, 3])

    steps = e.tensor(torch.arange(t).reshape(1, 1, t, 1), "steps")
    slot = e.op("Add", [e.op("Reshape", [past.name, e.ints([b, 1, 1, 1], "past")]), steps])
    index = e.op("Expand", [slot, e.ints([b, kv_heads, t, d], "index_shape")])
    for new, cache, name in ((k, k_cache, k_next), (v, v_cache, v_next)):
        e.op("ScatterElements", [cache.name, index, split(new.name, kv_heads)], name, axis=2)
    slots = e.tensor(torch.arange(capacity).reshape(1, 1, 1, capacity), "slots")
    mask = e.op("LessOrEqual", [slots, slot])
    if a["window"]:
        start = e.op("Sub", [slot, e.ints([a["window"]], "window")])
        mask = e.op("And", [mask, e.op("Greater", [slots, start])])
    if a["alibi_slopes"]:
        slopes = torch.tensor(a["alibi_slopes"], dtype=q.type.torch_dtype).reshape(1, -1, 1, 1)
        offset = e.op("Cast", [e.op("Sub", [slots, slot])], to=ONNX_DTYPES[q.dtype])
        alibi = e.op("Mul", [e.tensor(slopes, "alibi_slopes"), offset])
        blocked = e.tensor(torch.tensor(float("-inf"), dtype=q.type.torch_dtype), "blocked")
        mask = e.op("Where", [mask, alibi, blocked])
    y = e.op(
        "Attention",
        [split(q.name, a["num_heads"]), k_next, v_next, mask],
        scale=float(a["scale"]),
    )
    y = e.op("Transpose", [y], perm=[0, 2, 1, 3])
    e.op("Reshape", [y, e.ints([b, t, width], "shape")], out, allowzero=1)
