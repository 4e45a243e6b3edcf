"""Number formats of the wafer and their emulation on fp32 tensors.

A kernel running in a 16-bit precision stores its operands in that format, multiplies them
(the product of two 16-bit values is exact in fp32: at most 11 + 11 significand bits) and
accumulates in fp32, as Cerebras' mixed-precision training does. The simulator therefore keeps
fp32 tensors whose values are representable in the format: `round_to` rounds to nearest, ties
to even, overflows to ±inf, and keeps NaN, ±0 and subnormals.

CB16 ("cbfloat16") has 1 sign, 6 exponent and 9 mantissa bits. Its exponent bias and special
values are not published; cgc assumes bias 31 and IEEE conventions (exponent field all ones is
inf/NaN, gradual underflow with subnormals down to 2^-39). Largest finite value:
(2 - 2^-9) * 2^31 ≈ 4.29e9; smallest normal 2^-30.
"""

from __future__ import annotations

import torch

from cgc.errors import InputError

PRECISIONS = ("fp32", "fp16", "bf16", "cb16")
# Bytes one element occupies in SRAM and on the fabric (two 16-bit values share a wavelet).
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "cb16": 2}

# Unit roundoff u = 2^-(mantissa bits + 1): round_to(x) = x·(1 + δ) with |δ| ≤ u in the
# normal range. Error bounds in the kernels are stated in terms of u.
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8, "cb16": 2.0**-10}

# (exponent bits, mantissa bits, bias) of CB16, bias assumed (see the module docstring).
CB16_FORMAT = (6, 9, 31)


def check_precision(precision: str) -> str:
    """`precision` if the wafer has it, else an InputError listing the choices."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def round_to(x: torch.Tensor, precision: str) -> torch.Tensor:
    """fp32 values of `x` rounded to `precision` (round to nearest even); other dtypes unchanged.

    fp32 tensors in fp32 precision are returned as they are (no copy).
    """
    check_precision(precision)
    if not x.is_floating_point():
        return x
    x = x.float()
    if precision == "fp32":
        return x
    if precision == "fp16":
        return x.to(torch.float16).float()
    if precision == "bf16":
        return x.to(torch.bfloat16).float()
    return round_ieee_like(x, *CB16_FORMAT)


def round_ieee_like(x: torch.Tensor, exp_bits: int, mant_bits: int, bias: int) -> torch.Tensor:
    """Round fp32 `x` to a binary format with IEEE conventions and the given field widths.

    Normal results round the fp32 bit pattern: adding half an ulp minus one, plus the lowest
    kept bit, gives ties to even and carries into the exponent. Results below the smallest
    normal are multiples of the fixed subnormal quantum and use torch.round, which also ties
    to even (the quantum must be an fp32 normal: true for fp16 and cb16). The work runs in
    place over chunks, since fresh full-size temporaries cost more than the arithmetic.
    """
    emin, emax = 1 - bias, (2**exp_bits - 2) - bias
    if not (0 < mant_bits < 23 and emin - mant_bits >= -126 and emax <= 127):
        raise ValueError(f"format e{exp_bits}m{mant_bits} bias {bias} does not fit this method")
    shift = 23 - mant_bits
    largest = _bits((2.0 - 2.0**-mant_bits) * 2.0**emax)
    smallest_normal, quantum = _bits(2.0**emin), 2.0 ** (emin - mant_bits)
    x = x.float().contiguous()
    src = x.view(-1).view(torch.int32)
    out = torch.empty_like(src)
    for start in range(0, src.numel(), _CHUNK):
        bits, r = src[start : start + _CHUNK], out[start : start + _CHUNK]
        torch.bitwise_and(bits, 0x7FFFFFFF, out=r)
        nan, subnormal = r > _INF, r < smallest_normal
        r.clamp_max_(_INF)  # NaN patterns could overflow the addition; restored below
        scratch = r >> shift
        scratch &= 1
        r += scratch
        r += (1 << (shift - 1)) - 1
        r &= ~((1 << shift) - 1)
        r.masked_fill_(r > largest, _INF)
        if subnormal.any():
            tiny = bits[subnormal].view(torch.float32).abs()
            r[subnormal] = (torch.round(tiny / quantum) * quantum).view(torch.int32)
        if nan.any():
            r[nan] = bits[nan] & 0x7FFFFFFF
        torch.bitwise_and(bits, _SIGN, out=scratch)
        r |= scratch
    return out.view(torch.float32).view(x.shape)


_CHUNK = 1 << 18
_INF = 0x7F800000  # fp32 +inf bit pattern
_SIGN = -(2**31)  # the sign bit as an int32


def _bits(value: float) -> int:
    """The fp32 bit pattern of `value` as an integer."""
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32))
