"""Which kernel runs each IR op on the wafer."""

from __future__ import annotations

from cgc.backends.cerebras.kernels.attention import Attention, AttentionLse
from cgc.backends.cerebras.kernels.attention_grad import AttentionGrad
from cgc.backends.cerebras.kernels.base import Kernel
from cgc.backends.cerebras.kernels.cached_attention import CachedAttention
from cgc.backends.cerebras.kernels.cross_entropy import CrossEntropy, CrossEntropyGrad
from cgc.backends.cerebras.kernels.data_movement import FREE_OPS, Free, Transpose, keeps_order
from cgc.backends.cerebras.kernels.elementwise import ELEMENT_COST, Elementwise
from cgc.backends.cerebras.kernels.embedding import Embedding
from cgc.backends.cerebras.kernels.embedding_grad import EmbeddingGrad
from cgc.backends.cerebras.kernels.gemm import Linear, Matmul
from cgc.backends.cerebras.kernels.gemm_backward import (
    DataGradient,
    WeightGradient,
    feeds_weight_gradients,
    is_data_gradient,
    reads_transposed_tokens,
)
from cgc.backends.cerebras.kernels.layer_norm import LayerNorm
from cgc.backends.cerebras.kernels.layer_norm_grad import LayerNormGrad
from cgc.backends.cerebras.kernels.reduction import (
    RowReduction,
    TokenReduction,
    reduces_leading_axes,
)
from cgc.backends.cerebras.kernels.rms_norm import RMSNorm
from cgc.backends.cerebras.kernels.rotary import RotaryEmbedding
from cgc.backends.cerebras.kernels.scan import Scan
from cgc.backends.cerebras.kernels.swiglu import SwiGLU
from cgc.backends.cerebras.machine import Machine
from cgc.errors import UnsupportedOpError
from cgc.ir import Node

KERNELS: dict[str, type[Kernel]] = {
    "linear": Linear,
    "matmul": Matmul,
    "attention": Attention,
    "cached_attention": CachedAttention,
    "attention_lse": AttentionLse,
    "attention_grad": AttentionGrad,
    "layer_norm": LayerNorm,
    "layer_norm_grad": LayerNormGrad,
    "swiglu": SwiGLU,
    "rms_norm": RMSNorm,
    "rotary_embedding": RotaryEmbedding,
    "cumsum": Scan,
    "embedding": Embedding,
    "embedding_grad": EmbeddingGrad,
    "cross_entropy": CrossEntropy,
    "cross_entropy_grad": CrossEntropyGrad,
    "gelu": Elementwise,
    "gelu_grad": Elementwise,
    **{op: Elementwise for op in ELEMENT_COST},
    **{op: RowReduction for op in ("softmax", "log_softmax", "reduce_sum", "reduce_mean")},
    **{op: RowReduction for op in ("reduce_max", "var")},
    **{op: Free for op in FREE_OPS},
}


def kernel_for(node: Node, machine: Machine, precision: str) -> Kernel:
    """The kernel running `node` on `machine` in `precision` (fp32, fp16, bf16 or cb16).

    Some ops have a second kernel chosen by their operands: a matmul contracting the token axis
    of two streams is a weight gradient (its transpose is then free), a matmul by a parameter a
    data gradient, and a reduce_sum over leading axes a sum across tokens.
    An UnsupportedOpError names an op the wafer cannot run.
    """
    if node.op == "transpose":
        x = node.inputs[0]
        if feeds_weight_gradients(node.outputs[0]):
            return Free(node, machine, precision)
        if x.producer is not None and not keeps_order(x.shape, node.attrs["perm"]):
            return Transpose(node, machine, precision)
    if node.op == "matmul":
        if reads_transposed_tokens(node):
            return WeightGradient(node, machine, precision)
        if is_data_gradient(node):
            return DataGradient(node, machine, precision)
    if reduces_leading_axes(node):
        return TokenReduction(node, machine, precision)
    cls = KERNELS.get(node.op)
    if cls is None:
        where = node.meta.get("source") or node.meta.get("scope") or f"%{node.outputs[0].name}"
        raise UnsupportedOpError(
            f"the cerebras backend has no kernel for op {node.op!r} ({where}); "
            "use --backend onnxruntime for this model"
        )
    return cls(node, machine, precision)
