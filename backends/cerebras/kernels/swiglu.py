"""SwiGLU, silu(x·w_gateᵀ)·(x·w_upᵀ): both projections in one weight-stationary pass over x.

The `linear` kernel's layout (kernels/gemm.py) with two weights: each PE of a lane holds the
k_tile x n_tile blocks of w_gate and w_up for the same outputs, so a token's x segment, sent
down the columns once, feeds both products, and both fp32 partial sums run west to east along
the chain side by side. The east PE gates where the products land: silu(gate)·up (a sigmoid,
two multiplies), computed in fp32 and rounded once to the precision. A separate gate and up
projection would send x down twice and write the gate's output to the fabric and back.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from cgc.backends.cerebras.kernels.gemm import Linear, k_chain_product
from cgc.backends.cerebras.machine import VECTOR_OP_COST
from cgc.backends.cerebras.precision import round_to


class SwiGLU(Linear):
    """Gate and up projections of the same tokens, gated at the chain's east end."""

    products = 2
    combine = VECTOR_OP_COST["sigmoid"] + 2 * VECTOR_OP_COST["mul"]

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """The linear kernel's tiling, each PE holding both weights' blocks."""
        return {
            **super()._tile(rows, cols),
            "kernel": "swiglu",
            "reduce": "two chains west to east side by side, gated at the east end",
        }

    def _execute(self, args, tiling):
        x, w_gate, w_up = args
        rows = x.reshape(self.m, self.k)
        gate, up = (k_chain_product(rows, w, tiling["k_tile"]) for w in (w_gate, w_up))
        y = F.silu(gate) * up
        return [round_to(y, self.precision).reshape(*x.shape[:-1], self.n)]
