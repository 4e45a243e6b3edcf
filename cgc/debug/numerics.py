"""Numerical comparison of outputs against a reference: max abs / max rel error and where."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Comparison:
    """How far one output is from its reference, and whether it is within tolerance."""

    name: str
    max_abs: float
    max_rel: float
    where: tuple[int, ...]  # index of the largest absolute error
    ok: bool

    def row(self) -> str:
        at = ",".join(map(str, self.where))
        return f"{self.name:<12} {self.max_abs:>10.3e} {self.max_rel:>10.3e}  [{at}]"


def compare(
    name: str, got: torch.Tensor, ref: torch.Tensor, *, rtol: float, atol: float
) -> Comparison:
    """Compare `got` with `ref` elementwise: ok when |got - ref| <= atol + rtol·|ref| everywhere.

    Relative error divides by |ref| where it is non-zero (the smallest positive normal number
    otherwise), as Polygraphy and numpy.allclose do.
    """
    if got.shape != ref.shape:
        return Comparison(name, float("inf"), float("inf"), (), False)
    got, ref = got.detach().double(), ref.detach().double()
    diff = (got - ref).abs()
    both_inf = torch.isinf(got) & torch.isinf(ref) & (torch.sign(got) == torch.sign(ref))
    diff = torch.where(both_inf, torch.zeros_like(diff), diff).nan_to_num(nan=float("inf"))
    rel = diff / ref.abs().clamp_min(torch.finfo(torch.float32).tiny)
    flat = int(diff.argmax()) if diff.numel() else 0
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    ok = bool((diff <= atol + rtol * ref.abs()).all())
    max_abs = float(diff.max()) if diff.numel() else 0.0
    max_rel = float(rel.max()) if rel.numel() else 0.0
    return Comparison(name, max_abs, max_rel, where, ok)


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
