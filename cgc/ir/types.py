"""Tensor types of the IR: a static shape and an element type."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

# IR dtype name -> torch dtype. Short MLIR-style names keep printed IR compact.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "f64": torch.float64,
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,
    "i32": torch.int32,
    "i16": torch.int16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_DTYPES = frozenset({"f64", "f32", "f16", "bf16"})


def dtype_name(dtype: torch.dtype) -> str:
    """IR name of a torch dtype."""
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        from cgc.errors import UnsupportedOpError

        raise UnsupportedOpError(f"dtype {dtype} is not supported by cgc") from None


@dataclass(frozen=True)
class TensorType:
    """A tensor's static shape and element type, printed as `f32[1,128,768]`."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def itemsize(self) -> int:
        return TORCH_DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorType:
        """The type of a (real, fake or meta) torch tensor."""
        return cls(tuple(tensor.shape), dtype_name(tensor.dtype))

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(shape, self.dtype)

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"
