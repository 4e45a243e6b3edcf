"""GEMM kernels: weight-stationary `linear` (GEMV style) and SUMMA `matmul`.

`linear` (x[M, K] @ w[N, K]ᵀ + b), the layer-pipelined form, keeps the weight resident and
streams tokens, as the SDK's GEMV example does. The rectangle's rows and column groups form
*lanes*, each owning a block of `n_tile` outputs; the `chain` columns of a lane each hold one
`k_tile` x `n_tile` weight block. A token's x arrives down every column (its K block), each PE
multiplies (k_tile vector FMACs of length n_tile), and fp32 partial sums run west to east
along the lane; the east PE adds the bias and emits y. Chains are at most MAX_CHAIN long.
With SRAM to spare, `token_groups` groups of lanes each hold a copy of the weights and take a
share (m_tile) of the tokens. The tiling takes the chain and groups with the fewest cycles
among those that fit in SRAM.

`matmul` (both operands are activations; also the GEMM benchmark) runs SUMMA as the SDK's
gemm-collectives_2d example: C[M, N] is tiled m_tile x n_tile over the rectangle, A and B are
stored in blocks (A's K split over the columns, B's over the rows) and K is walked in `steps`
panels of k_tile (the narrower block width); at step s the owners broadcast their A panel along
the rows and B panel down the columns, then every PE accumulates C += A_s·B_s (k_tile·min(m,n)
vector FMACs of length max(m_tile, n_tile)). Broadcast and compute alternate without overlap,
as in the example. Batch dimensions run one after another.
"""

from __future__ import annotations

from math import prod
from typing import Any

import torch

from cgc.backends.cerebras.kernels.base import (
    MAX_CHAIN,
    Cost,
    Kernel,
    ceil_div,
    elem_bytes,
    pick_tiling,
    words,
)
from cgc.backends.cerebras.precision import BYTES, round_to
from cgc.backends.cerebras.tiles import chain_sum


class Linear(Kernel):
    """Weight-stationary x @ wᵀ + b: tokens stream through lanes of K-block chains."""

    max_chain = MAX_CHAIN
    # Weight matrices multiplied by each token's x in the same pass, and FMAC-equivalents per
    # output element that the chain's east end adds to combine their products (SwiGLU's gate).
    products = 1
    combine = 0

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        x, w = self.in_types[0], self.in_types[1]
        self.k, self.n = x.shape[-1], w.shape[0]
        self.m = x.numel // self.k
        self.bias = len(self.in_types) == 2 + self.products
        self.weight_slots = tuple(range(1, len(self.in_types)))
        self._lanes: dict[tuple[int, int], tuple[list[tuple], tuple | None]] = {}
        self._evaluated: dict[tuple[int, int, int], tuple[int, int, int]] = {}

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """The chain and token groups that fit in SRAM with the fewest cycles (`pick_tiling`)."""
        fitting, spilling = [], []
        longer = range(2 * MAX_CHAIN, min(cols, self.max_chain, self.k) + 1, MAX_CHAIN)
        for chain in [*range(1, min(cols, MAX_CHAIN, self.k) + 1), *longer]:
            if ceil_div(self.k, ceil_div(self.k, chain)) != chain:
                continue  # a shorter chain gives the same k_tile with more lanes
            frontier, spill = self._lane_options(chain, rows * (cols // chain))
            latency = self._latency(rows, chain)
            fitting += [(cycles + latency, *rest) for cycles, *rest in frontier]
            if spill is not None:
                spilling.append(spill)
        chain, lanes, groups, m_tile, k_tile, n_tile = pick_tiling(fitting, spilling)
        return {
            "kernel": "gemm",
            "style": "stationary",
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "k": self.k,
            "n": self.n,
            "chain": chain,
            "lanes": lanes,
            "token_groups": groups,
            "m_tile": m_tile,
            "k_tile": k_tile,
            "n_tile": n_tile,
            "reduce": "chain west to east, bias at the east end",
        }

    def _lane_options(self, chain: int, lanes: int) -> tuple[list[tuple], tuple | None]:
        """Token-group counts for `lanes` lanes of `chain` PEs: the ones that fit in SRAM and are
        faster than every one with less SRAM (cycles without latency, sram, order, tiling), and
        the first that spills. They do not depend on the rectangle beyond chain and lanes.

        The planner asks for hundreds of thousands of these, so the SRAM and cycle formulas are
        evaluated here alone and every option's (compute, fabric, sram) is kept for `cost` and
        `sram_bytes`.
        """
        key = (chain, lanes)
        if key in self._lanes:
            return self._lanes[key]
        mach, b = self.machine, BYTES[self.precision]
        m, n, k_tile = self.m, self.n, ceil_div(self.k, chain)
        # per product: FMACs and the partial add; then the bias add and the combination
        vectors = self.products * (k_tile + (chain > 1)) + self.bias + self.combine
        x_words = m * words(k_tile, b)  # every token's x segment down each column
        # x double buffer; per output and product: weight column, fp32 accumulator, incoming
        # partials; per output: bias
        fixed = 2 * k_tile * b
        per_product = k_tile * b + 4 + (8 if chain > 1 else 0)
        per_output = self.products * per_product + (b if self.bias else 0)
        frontier, spill = [], None
        groups = 1
        while groups <= min(m, lanes):
            m_tile, n_tile = -(-m // groups), -(-n // (lanes // groups))
            peak = vectors * mach.vector_cycles(n_tile, self.precision)
            per_token = mach.sustained_cycles(peak) + mach.task_overhead_cycles
            # a lane emits fp32 partial sums (one per wavelet) or, at a chain's end, outputs
            out = self.products * n_tile if chain > 1 else words(n_tile, b)
            compute, fabric = m_tile * per_token, max(x_words, m_tile * out)
            sram = fixed + per_output * n_tile
            self._evaluated[chain, lanes, groups] = compute, fabric, sram
            t = (chain, lanes, groups, m_tile, k_tile, n_tile)
            if sram > mach.sram_usable_bytes:
                spill = (sram, (chain, groups), t)
                break  # more groups only widen each lane's weight block
            if not frontier or max(compute, fabric) < frontier[-1][0]:
                frontier.append((max(compute, fabric), sram, (chain, groups), t))
            if m_tile == 1:
                break
            groups *= 2
        self._lanes[key] = frontier, spill
        return frontier, spill

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Weight block, bias block, x double buffer, fp32 accumulator, incoming partials."""
        return self._option(rows, cols)[2]

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token of a lane's group: k_tile FMAC vectors + partial add + bias. Column links
        carry every token's x segment; row links a group's partial sums or outputs."""
        compute, fabric, _ = self._option(rows, cols)
        latency = self._latency(rows, self.tiling(rows, cols)["chain"])
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _option(self, rows: int, cols: int) -> tuple[int, int, int]:
        """(compute, fabric, sram) of the tiling chosen for the rectangle."""
        t = self.tiling(rows, cols)
        return self._evaluated[t["chain"], t["lanes"], t["token_groups"]]

    def _latency(self, rows: int, chain: int) -> int:
        """Fill and drain: a token crosses the rows, its partial sums the chain."""
        m = self.machine
        return m.hop_latency_cycles * (rows + chain) + m.task_overhead_cycles

    def _execute(self, args, tiling):
        x, w = args[0], args[1]
        y = k_chain_product(x.reshape(self.m, self.k), w, tiling["k_tile"])
        if self.bias:
            y += args[2]
        return [round_to(y, self.precision).reshape(*x.shape[:-1], self.n)]


# Partial products materialised at once (elements): bounds the simulator's memory on the
# vocabulary projection while keeping batched matmuls large.
_CHUNK_ELEMENTS = 1 << 24


def k_chain_product(x: torch.Tensor, w: torch.Tensor, k_tile: int) -> torch.Tensor:
    """x @ wᵀ with K cut into k_tile blocks: one fp32 product per block, summed in block order."""
    (m, k), n = x.shape, w.shape[0]
    full = k // k_tile  # blocks of exactly k_tile; a shorter last block goes on the chain's end
    if full <= 1:
        return chain_sum(
            x[:, k0 : k0 + k_tile] @ w[:, k0 : k0 + k_tile].T for k0 in range(0, k, k_tile)
        )
    xb = x[:, : full * k_tile].reshape(m, full, k_tile).transpose(0, 1).contiguous()
    y = torch.empty(m, n)
    step = max(1, _CHUNK_ELEMENTS // (full * m))
    for n0 in range(0, n, step):
        wb = w[n0 : n0 + step, : full * k_tile].reshape(-1, full, k_tile).permute(1, 2, 0)
        y[:, n0 : n0 + step] = chain_sum(torch.bmm(xb, wb).unbind(0))
    if full * k_tile < k:
        y += x[:, full * k_tile :] @ w[:, full * k_tile :].T
    return y


class Matmul(Kernel):
    """SUMMA a @ b on a rows x cols grid (batch dimensions one after another)."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        a, b = self.in_types
        self.m, self.k, self.n = a.shape[-2], a.shape[-1], b.shape[-1]
        self.batch = prod(self.out_types[0].shape[:-2])
        self.b = elem_bytes(a, self.precision)

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """A in m_tile x ⌈K/cols⌉ blocks, B in ⌈K/rows⌉ x n_tile blocks, k_tile-wide panels."""
        k_tile = min(ceil_div(self.k, cols), ceil_div(self.k, rows))
        return {
            "kernel": "gemm",
            "style": "summa",
            "rows": rows,
            "cols": cols,
            "batch": self.batch,
            "m": self.m,
            "k": self.k,
            "n": self.n,
            "steps": ceil_div(self.k, k_tile),
            "m_tile": ceil_div(self.m, rows),
            "k_tile": k_tile,
            "n_tile": ceil_div(self.n, cols),
            "reduce": "steps in order into each PE's fp32 C tile",
        }

    def sram_bytes(self, rows: int, cols: int) -> int:
        """Home A and B blocks, one in-flight panel of each, the fp32 C tile."""
        t = self.tiling(rows, cols)
        mt, kt, nt = t["m_tile"], t["k_tile"], t["n_tile"]
        home = mt * ceil_div(self.k, cols) + ceil_div(self.k, rows) * nt
        return (home + mt * kt + kt * nt) * self.b + mt * nt * 4

    def resident_bytes(self) -> int:
        """Both operands, stored in blocks before the first step."""
        return sum(t.numel for t in self.in_types) * self.b

    def cost(self, rows: int, cols: int) -> Cost:
        """Per step: broadcast A along rows ‖ B down columns, then the local tile product."""
        t = self.tiling(rows, cols)
        m = self.machine
        mt, kt, nt = t["m_tile"], t["k_tile"], t["n_tile"]
        hop = m.hop_latency_cycles
        broadcast = (
            max(
                words(mt * kt, self.b) + hop * (cols - 1), words(kt * nt, self.b) + hop * (rows - 1)
            )
            + m.task_overhead_cycles
        )
        product = m.sustained_cycles(
            kt * min(mt, nt) * m.vector_cycles(max(mt, nt), self.precision)
        )
        steps = self.batch * t["steps"]
        compute, fabric = steps * product, steps * broadcast
        return Cost(
            compute, fabric, m.task_overhead_cycles, compute + fabric + m.task_overhead_cycles
        )

    def _execute(self, args, tiling):
        a, b = args
        kt = tiling["k_tile"]
        c = chain_sum(a[..., k0 : k0 + kt] @ b[..., k0 : k0 + kt, :] for k0 in range(0, self.k, kt))
        return [round_to(c, self.precision)]
