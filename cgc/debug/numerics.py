"""Numerical comparison of outputs against a reference: how far off, where, and how the error is
spread (percentiles and a histogram of the absolute error, as Polygraphy reports them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Bin:
    """`count` elements whose absolute error lies in [lo, hi); lo = hi = 0 counts exact ones."""

    lo: float
    hi: float
    count: int


@dataclass(frozen=True)
class Comparison:
    """How far one output is from its reference, and whether it is within tolerance."""

    name: str
    max_abs: float
    max_rel: float
    where: tuple[int, ...]  # index of the largest absolute error
    ok: bool
    numel: int = 0
    mismatches: int = 0  # elements out of tolerance
    got_at: float = math.nan  # both values at `where`
    ref_at: float = math.nan
    allowed: float = math.nan  # the bound at `where`, atol + rtol·|ref_at|
    where_rel: tuple[int, ...] = ()  # index of the largest relative error
    percentiles: dict[int, float] = field(default_factory=dict)  # of the absolute error
    histogram: tuple[Bin, ...] = ()
    problem: str = ""  # why no elementwise comparison was possible (shapes differ)

    def row(self) -> str:
        at = ",".join(map(str, self.where))
        return f"{self.name:<12} {self.max_abs:>10.3e} {self.max_rel:>10.3e}  [{at}]"


def compare(
    name: str,
    got: torch.Tensor,
    ref: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    detail: bool = True,
) -> Comparison:
    """Compare `got` with `ref` elementwise: ok when |got - ref| <= atol + rtol·|ref| everywhere.

    Relative error divides by |ref| where it is non-zero (the smallest positive normal number
    otherwise), as Polygraphy and numpy.allclose do. `detail` adds percentiles and a histogram.
    """
    if got.shape != ref.shape:
        problem = f"shape {list(got.shape)} differs from the reference's {list(ref.shape)}"
        return Comparison(name, math.inf, math.inf, (), False, problem=problem)
    got, ref = got.detach().double(), ref.detach().double()
    diff = (got - ref).abs()
    both_inf = torch.isinf(got) & torch.isinf(ref) & (torch.sign(got) == torch.sign(ref))
    diff = torch.where(both_inf, torch.zeros_like(diff), diff).nan_to_num(nan=math.inf)
    rel = diff / ref.abs().clamp_min(torch.finfo(torch.float32).tiny)
    if not diff.numel():
        return Comparison(name, 0.0, 0.0, (), True)
    where = _index(int(diff.argmax()), diff.shape)
    bad = ~(diff <= atol + rtol * ref.abs())
    return Comparison(
        name,
        float(diff.max()),
        float(rel.max()),
        where,
        not bool(bad.any()),
        numel=diff.numel(),
        mismatches=int(bad.sum()),
        got_at=float(got[where]),
        ref_at=float(ref[where]),
        allowed=atol + rtol * abs(float(ref[where])),
        where_rel=_index(int(rel.argmax()), rel.shape),
        percentiles=percentiles(diff) if detail else {},
        histogram=histogram(diff) if detail else (),
    )


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, tuple(shape)))


def percentiles(diff: torch.Tensor) -> dict[int, float]:
    """The p50 / p90 / p99 of an error tensor (nearest rank: interpolating next to an
    infinite error would give nan)."""
    values = np.percentile(diff.reshape(-1).numpy(), PERCENTILES, method="nearest")
    return {p: float(v) for p, v in zip(PERCENTILES, values, strict=True)}


def histogram(diff: torch.Tensor, max_bins: int = 8) -> tuple[Bin, ...]:
    """Counts of an error tensor per decade ([1e-7, 1e-6), ...); errors span orders of
    magnitude, so equal-width bins would put nearly everything in the first one."""
    flat = diff.reshape(-1)
    exact = int((flat == 0).sum())
    bins = [Bin(0.0, 0.0, exact)] if exact else []
    nonzero = flat[flat > 0]
    if not nonzero.numel():
        return tuple(bins)
    finite = nonzero[torch.isfinite(nonzero)]
    if finite.numel():
        smallest = math.floor(math.log10(float(finite.min())))
        top = math.floor(math.log10(float(finite.max()))) + 1
        low = max(smallest, top - max_bins)
        edges = [10.0**e for e in range(low, top + 1)]
        index = torch.bucketize(finite, torch.tensor(edges, dtype=torch.float64), right=True) - 1
        counts = torch.bincount(index.clamp(0, len(edges) - 2), minlength=len(edges) - 1)
        lows = edges[:-1]
        if smallest < low:  # the first bin also holds every smaller error
            lows[0] = 0.0
        bins += [Bin(a, b, c) for a, b, c in zip(lows, edges[1:], counts.tolist(), strict=True)]
    infinite = int((~torch.isfinite(nonzero)).sum())
    if infinite:
        bins.append(Bin(math.inf, math.inf, infinite))
    return tuple(bins)


def compare_all(
    names: Sequence[str],
    got: Sequence[torch.Tensor],
    ref: Sequence[torch.Tensor],
    *,
    rtol: float,
    atol: float,
) -> list[Comparison]:
    """Compare matching outputs one by one."""
    return [compare(n, g, r, rtol=rtol, atol=atol) for n, g, r in zip(names, got, ref, strict=True)]
