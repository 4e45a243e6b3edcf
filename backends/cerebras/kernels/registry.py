"""Which kernel runs each IR op on the wafer."""

from __future__ import annotations

from cgc.backends.cerebras.kernels.attention import Attention
from cgc.backends.cerebras.kernels.base import Kernel
from cgc.backends.cerebras.kernels.cached_attention import CachedAttention
from cgc.backends.cerebras.kernels.data_movement import FREE_OPS, Free, Transpose, keeps_order
from cgc.backends.cerebras.kernels.elementwise import ELEMENT_COST, Elementwise
from cgc.backends.cerebras.kernels.embedding import Embedding
from cgc.backends.cerebras.kernels.gemm import Linear, Matmul
from cgc.backends.cerebras.kernels.layer_norm import LayerNorm
from cgc.backends.cerebras.kernels.reduction import RowReduction
from cgc.backends.cerebras.machine import Machine
from cgc.errors import UnsupportedOpError
from cgc.ir import Node

KERNELS: dict[str, type[Kernel]] = {
    "linear": Linear,
    "matmul": Matmul,
    "attention": Attention,
    "cached_attention": CachedAttention,
    "layer_norm": LayerNorm,
    "embedding": Embedding,
    "gelu": Elementwise,
    **{op: Elementwise for op in ELEMENT_COST},
    **{op: RowReduction for op in ("softmax", "log_softmax", "reduce_sum", "reduce_mean")},
    **{op: RowReduction for op in ("reduce_max", "var")},
    **{op: Free for op in FREE_OPS},
}


def kernel_for(node: Node, machine: Machine, precision: str) -> Kernel:
    """The kernel running `node` on `machine` in `precision` (fp32, fp16, bf16 or cb16).

    An UnsupportedOpError names an op the wafer cannot run.
    """
    if node.op == "transpose":
        x = node.inputs[0]
        if x.producer is not None and not keeps_order(x.shape, node.attrs["perm"]):
            return Transpose(node, machine, precision)
    cls = KERNELS.get(node.op)
    if cls is None:
        where = node.meta.get("source") or node.meta.get("scope") or f"%{node.outputs[0].name}"
        raise UnsupportedOpError(
            f"the cerebras backend has no kernel for op {node.op!r} ({where}); "
            "use --backend onnxruntime for this model"
        )
    return cls(node, machine, precision)
