"""What an ATen converter may ask of the importer that calls it.

`cgc.frontends.fx.FxImporter` provides this; the converter table (`cgc.frontends.aten`) is
typed against the protocol, so the table and the importer do not import each other.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch.fx import Node as FxNode

from cgc.errors import UnsupportedOpError
from cgc.ir import Graph, TensorType, Value


class ConversionContext(Protocol):
    """The importer as a converter sees it: operands in, IR out through `g`."""

    g: Graph  # the IR graph being built
    folded: dict[FxNode, Any]  # FX nodes computed at import time (constants), by node

    def value(self, arg: FxNode) -> Value:
        """The IR value of a tensor argument."""
        ...

    def operand(self, arg: Any, dtype: str) -> Value:
        """A tensor or Python scalar argument as a value of `dtype` (cast when it differs)."""
        ...

    @property
    def out(self) -> TensorType:
        """The result type torch reports for the node being built."""
        ...

    def type_of(self, arg: Any) -> TensorType | None:
        """The type of a tensor argument; None for a Python scalar."""
        ...

    def scalar(self, value: bool | int | float, dtype: str) -> Value:
        """A scalar `constant` node."""
        ...

    def tensor(self, data: torch.Tensor) -> Value:
        """A tensor computed at import as a graph value."""
        ...

    def result_dtype(self, *args: Any) -> str:
        """The dtype torch promotes these operands to."""
        ...

    def causal_mask(self, queries: int, keys: int) -> Value:
        """A bool [queries, keys] parameter, true where key index <= query index."""
        ...

    def unsupported(self, reason: str) -> UnsupportedOpError:
        """The error for an op cgc maps only in part."""
        ...
