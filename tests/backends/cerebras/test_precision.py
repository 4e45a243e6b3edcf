"""Rounding to fp16, bf16 and cb16 (1|6|9, bias 31 assumed) on fp32 tensors."""

import math
import random

import pytest
import torch

from cgc.backends.cerebras import UNIT_ROUNDOFF, round_to
from cgc.backends.cerebras.precision import round_ieee_like
from cgc.errors import InputError

CB16_MAX = (2 - 2**-9) * 2.0**31
CB16_MIN_NORMAL = 2.0**-30
CB16_MIN_SUBNORMAL = 2.0**-39


def slow_round(x: float, exp_bits: int, mant_bits: int, bias: int) -> float:
    """Reference: nearest multiple of the binade's quantum, ties to even, in Python floats."""
    if math.isnan(x) or math.isinf(x) or x == 0:
        return x
    emin, emax = 1 - bias, 2**exp_bits - 2 - bias
    exponent = max(math.frexp(abs(x))[1] - 1, emin)
    quantum = 2.0 ** (exponent - mant_bits)
    y = round(abs(x) / quantum) * quantum  # Python's round() ties to even
    if y > (2 - 2.0**-mant_bits) * 2.0**emax:
        y = math.inf
    return math.copysign(y, x)


def cb16_value(code: int) -> float:
    """The value of a 16-bit CB16 pattern (sign, 6-bit exponent, 9-bit mantissa)."""
    sign = -1.0 if code >> 15 else 1.0
    exponent, mantissa = (code >> 9) & 0x3F, code & 0x1FF
    if exponent == 0x3F:
        return sign * math.inf if mantissa == 0 else math.nan
    if exponent == 0:
        return sign * mantissa * 2.0**-39
    return sign * (1 + mantissa / 512) * 2.0 ** (exponent - 31)


CB16_FINITE = sorted({v for c in range(1 << 16) if math.isfinite(v := cb16_value(c))})


def test_every_cb16_value_rounds_to_itself() -> None:
    values = torch.tensor(CB16_FINITE, dtype=torch.float64).float()
    assert len(CB16_FINITE) == 2 * 63 * 512 - 1  # ±, 63 finite binades of 512, one zero
    assert torch.equal(round_to(values, "cb16"), values)


def test_midpoints_between_cb16_values_round_to_even() -> None:
    positives = [v for v in CB16_FINITE if v >= 0]
    lo, hi = torch.tensor(positives[:-1]), torch.tensor(positives[1:])
    mid = ((lo.double() + hi.double()) / 2).float()
    assert torch.equal(mid.double(), (lo.double() + hi.double()) / 2)  # exact in fp32
    got = round_to(mid, "cb16")
    lo_even = torch.tensor([(c & 1) == 0 for c in range(len(positives) - 1)])
    assert torch.equal(got, torch.where(lo_even, lo, hi))
    # just above and below a midpoint go to the nearer neighbour
    assert torch.equal(round_to(torch.nextafter(mid, hi), "cb16"), hi)
    assert torch.equal(round_to(torch.nextafter(mid, lo), "cb16"), lo)


def test_cb16_matches_the_slow_reference_on_random_values() -> None:
    rng = random.Random(0)
    xs = [rng.uniform(-1, 1) * 2.0 ** rng.randint(-45, 35) for _ in range(20_000)]
    xs += [float(torch.tensor(x, dtype=torch.float32)) for x in xs[:100]]
    x = torch.tensor(xs, dtype=torch.float32)
    want = torch.tensor([slow_round(float(v), 6, 9, 31) for v in x], dtype=torch.float32)
    assert torch.equal(round_to(x, "cb16"), want)


@pytest.mark.parametrize(
    ("x", "want"),
    [
        (CB16_MAX, CB16_MAX),
        (CB16_MAX * (1 + 2**-11), CB16_MAX),  # below the halfway point to 2^32
        (2.0**32 - 2.0**21, math.inf),  # exactly halfway: ties to even = 2^32 = overflow
        (1e10, math.inf),
        (-1e10, -math.inf),
        (CB16_MIN_NORMAL, CB16_MIN_NORMAL),
        (CB16_MIN_SUBNORMAL, CB16_MIN_SUBNORMAL),
        (CB16_MIN_SUBNORMAL / 2, 0.0),  # halfway to zero: ties to even = 0
        (CB16_MIN_SUBNORMAL * 0.75, CB16_MIN_SUBNORMAL),
        (CB16_MIN_SUBNORMAL * 1.5, 2 * CB16_MIN_SUBNORMAL),  # tie between 1 and 2 quanta
        (1e-30, 0.0),
        (1 + 2**-10, 1.0),  # tie: 1.0 is even
        (1 + 3 * 2**-10, 1 + 2**-8),  # tie between 1+2^-9 (odd) and 1+2^-8 (even)
        (math.inf, math.inf),
        (-math.inf, -math.inf),
    ],
)
def test_cb16_edge_cases(x: float, want: float) -> None:
    assert round_to(torch.tensor([x]), "cb16").item() == want


def test_specials_survive_every_precision() -> None:
    x = torch.tensor([math.nan, -0.0, 0.0, math.inf, -math.inf])
    for precision in ("fp32", "fp16", "bf16", "cb16"):
        y = round_to(x, precision)
        assert math.isnan(y[0].item())
        assert torch.equal(torch.signbit(y[1:3]), torch.tensor([True, False]))
        assert torch.equal(y[1:], x[1:])


def test_generic_rounding_matches_torch_fp16_casts() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=gen) * torch.exp2(torch.randint(-30, 20, (200_000,)).float())
    edges = torch.tensor([65504.0, 65519.99, 65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-14])
    x = torch.cat([x, edges, -edges])
    assert torch.equal(round_ieee_like(x, 5, 10, 15), x.half().float())


def test_fp16_and_bf16_use_torch_casts_and_fp32_is_the_identity() -> None:
    x = torch.tensor([1 + 2**-12, 1 + 2**-9, 70000.0, 3.4e38])
    assert round_to(x, "fp16").tolist() == [1.0, 1 + 2**-9, math.inf, math.inf]
    assert round_to(x, "bf16").tolist() == [1.0, 1.0, 70144.0, math.inf]
    assert round_to(x, "fp32") is x
    ids = torch.tensor([1, 2, 3])
    assert round_to(ids, "cb16") is ids


def test_rounding_error_is_within_the_unit_roundoff() -> None:
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(2))
    x = x[x.abs() > 2**-14]  # normal in every format
    for precision in ("fp16", "bf16", "cb16"):
        rel = ((round_to(x, precision) - x) / x).abs().max().item()
        assert rel <= UNIT_ROUNDOFF[precision]
        assert rel > UNIT_ROUNDOFF[precision] / 2  # the bound is tight


def test_unknown_precision() -> None:
    with pytest.raises(InputError, match="unknown precision 'tf32'"):
        round_to(torch.ones(1), "tf32")
