"""RMS norm over the last axis: tokens over rows, features over the columns of a row.

Laid out as layer norm (kernels/layer_norm.py) but in one pass: each PE holds a `d_tile` slice
of the scale; a token's slices arrive down the columns, Σx² runs as a chain west to east, the
east PE forms rstd = 1/√(Σx²/D + eps) and broadcasts it back west, and each PE writes x·rstd·w.
There is no mean to subtract, so a token costs one chain and one broadcast, not two. The
statistic is fp32; the output is rounded to the precision.
"""

from __future__ import annotations

import torch

from cgc.backends.cerebras.kernels.layer_norm import LayerNorm
from cgc.backends.cerebras.precision import round_to
from cgc.backends.cerebras.tiles import row_sum


class RMSNorm(LayerNorm):
    """x/√(mean(x²) + eps)·w along the last axis: layer norm's layout, costs and SRAM with one
    chain per token instead of two."""

    op = "rms_norm"
    chains = 1
    reduce = "one pass: a chain west to east, then broadcast back"

    def _execute(self, args, tiling):
        x = args[0]
        mean_square = (row_sum(x * x, tiling["d_tile"]) / self.d).unsqueeze(-1)
        y = x * torch.rsqrt(mean_square + self.attrs["eps"])
        if len(args) > 1:
            y = y * args[1]
        return [round_to(y, self.precision)]
