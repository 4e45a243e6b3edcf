"""The op registry and every op definition (importing this package registers them)."""

from cgc.ir.ops import (  # noqa: F401  (registration)
    backward,
    cached_attention,
    elementwise,
    linalg,
    loss,
    nn,
    random,
    reduce,
    rms_norm,
    rotary,
    shape,
    swiglu,
)
from cgc.ir.ops.registry import REQUIRED, OpDef, SameAs, all_ops, get_op, register

__all__ = ["REQUIRED", "OpDef", "SameAs", "all_ops", "get_op", "register"]
