"""The op registry: each op's signature, type inference, reference implementation and cost.

Backends keep their own lowering tables keyed by op name; this registry is the single place that
says what an op means. Fused ops also carry a decomposition into primitives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cgc.errors import IRError, UnsupportedOpError
from cgc.ir.types import TensorType

REQUIRED = object()  # marks an attribute with no default


@dataclass(frozen=True)
class SameAs:
    """A default taken from another attribute of the node: `num_kv_heads` = `num_heads`."""

    attr: str


InferFn = Callable[[Sequence[TensorType], Mapping[str, Any]], list[TensorType]]
ImplFn = Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
FlopsFn = Callable[[Sequence[TensorType], Sequence[TensorType], Mapping[str, Any]], int]
# A decomposition receives the graph (its insertion point set before the fused node), the fused
# node's inputs and attrs, and returns the values replacing the node's outputs.
DecomposeFn = Callable[[Any, Sequence[Any], Mapping[str, Any]], list[Any]]
# A vector-Jacobian product rule (reverse-mode autodiff, see cgc.passes.autodiff) receives the
# graph (its insertion point set where the backward pass is being built, new nodes inheriting
# the forward node's meta), the forward node (its inputs and outputs are live values of that
# graph), and the cotangent of each output (None where an output does not reach the loss); it
# returns the cotangent of each input, None where an input gets no gradient (integer operands,
# masks). A cotangent has exactly its operand's type: a rule sums broadcasting back
# (cgc.ir.ops.vjp.unbroadcast). A rule may return cotangents nobody needs (the pass erases dead
# nodes), but the pass refuses a None for an operand that depends on the parameters being
# differentiated. A rule whose backward needs a residual the op does not output may swap its
# forward node for one that does (cgc.ir.ops.vjp.replace_forward; `attention` becomes
# `attention_lse`). Ops with no gradient at all (comparisons, logical ops, constants, backward
# ops) register `differentiable=False` instead; tests/ir/test_vjp.py checks every rule against
# torch.autograd and fails for an op with neither.
VjpFn = Callable[[Any, Any, Sequence[Any]], list[Any]]


def _zero_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: Mapping) -> int:
    return 0


@dataclass(frozen=True)
class OpDef:
    """What an op is: arity, attributes with defaults, and its semantics."""

    name: str
    arity: int | tuple[int, int]  # exact count, or (min, max) inclusive; max -1 = unbounded
    attrs: Mapping[str, Any]
    infer: InferFn
    impl: ImplFn
    flops: FlopsFn = _zero_flops
    commutative: bool = False
    decompose: DecomposeFn | None = None
    doc: str = ""
    num_outputs: int = 1
    category: str = field(default="primitive")
    vjp: VjpFn | None = None
    differentiable: bool = True
    # Attributes added after an op first shipped, printed only when they differ from their
    # default, so the text of graphs that do not use them reads as before.
    elide: frozenset[str] = frozenset()

    def accepts(self, n: int) -> bool:
        """Whether the op takes `n` inputs."""
        if isinstance(self.arity, int):
            return n == self.arity
        lo, hi = self.arity
        return n >= lo and (hi < 0 or n <= hi)

    def complete_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """Attributes with defaults filled in; unknown or missing ones are an IRError."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise IRError(f"{self.name}: unknown attribute(s) {', '.join(sorted(unknown))}")
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = attrs[key]
            elif default is REQUIRED:
                raise IRError(f"{self.name}: missing attribute {key!r}")
            elif not isinstance(default, SameAs):
                out[key] = default
        for key, default in self.attrs.items():
            if isinstance(default, SameAs) and key not in out:
                out[key] = out[default.attr]
        return out

    def shown_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """The attributes the text form prints: all but elided ones at their default."""
        defaults = self.complete_attrs({k: v for k, v in attrs.items() if k not in self.elide})
        return {k: v for k, v in attrs.items() if k not in self.elide or v != defaults[k]}

    def bytes(self, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
        """Bytes moved: every input read once and every output written once."""
        return sum(t.nbytes for t in ins) + sum(t.nbytes for t in outs)


_REGISTRY: dict[str, OpDef] = {}


def register(
    name: str,
    *,
    arity: int | tuple[int, int],
    infer: InferFn,
    attrs: Mapping[str, Any] | None = None,
    flops: FlopsFn = _zero_flops,
    commutative: bool = False,
    decompose: DecomposeFn | None = None,
    num_outputs: int = 1,
    category: str = "primitive",
    vjp: VjpFn | None = None,
    differentiable: bool = True,
    elide: Sequence[str] = (),
) -> Callable[[ImplFn], ImplFn]:
    """Decorator registering `impl` (the torch reference implementation) as op `name`."""

    def wrap(impl: ImplFn) -> ImplFn:
        if name in _REGISTRY:
            raise ValueError(f"op {name!r} registered twice")
        _REGISTRY[name] = OpDef(
            name=name,
            arity=arity,
            attrs=dict(attrs or {}),
            infer=infer,
            impl=impl,
            flops=flops,
            commutative=commutative,
            decompose=decompose,
            doc=(impl.__doc__ or "").strip().splitlines()[0] if impl.__doc__ else "",
            num_outputs=num_outputs,
            category=category,
            vjp=vjp,
            differentiable=differentiable,
            elide=frozenset(elide),
        )
        return impl

    return wrap


def get_op(name: str) -> OpDef:
    """The definition of op `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedOpError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    """Every registered op by name."""
    return dict(sorted(_REGISTRY.items()))
