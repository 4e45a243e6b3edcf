"""The GEMM's two backward products: dX = dY·W (data gradient) and dW = dYᵀ·X (weight gradient).

In a joint graph, `linear` y = x·Wᵀ + b gets `matmul(dY, W)` for dX and
`matmul(transpose(dY), X)` for dW (autodiff's VJP), both over the flattened tokens.

`DataGradient` (dX = dY·W, W resident): the forward's weight-stationary dataflow
(`Linear`) with the weight read transposed. A PE keeps the same k_tile x n_tile block of W it
would hold for the forward, now indexed as dY's contraction (W's rows) by dX's features (W's
columns); tokens stream, partial sums run along the chain. In weight streaming the weight
streams in a second time for it.

`WeightGradient` (dW = dYᵀ·X): the reduction runs over the token stream, so neither operand can
stay resident: the *output* does. Each PE owns an n_tile x k_tile block of dW in fp32
accumulators; token by token, dY's row segment (n_tile values) travels east along the PE's row
and X's (k_tile values) south down its column, and the PE adds their outer product (n_tile
FMAC vectors of length k_tile): SUMMA with panels one token wide, the output never moving. The
rectangle's rows form `token_groups` bands, each holding a whole copy of dW and taking a
contiguous share (m_tile) of the tokens; more bands cost SRAM but save per-token task launches
when dW has few elements per PE. At the end the bands' copies are summed north to south, the
blocks streaming through the chain (base.chain_reduce_cycles), in an order the simulator
reproduces. The transpose feeding it is
free: the kernel reads dY's stream as it comes, it never transposes it (kernel_for makes that
transpose a route op).
"""

from __future__ import annotations

from typing import Any

from cgc.backends.cerebras.kernels.base import (
    MAX_CHAIN,
    Cost,
    Kernel,
    band_count,
    ceil_div,
    chain_reduce_cycles,
    elem_bytes,
    words,
)
from cgc.backends.cerebras.kernels.gemm import Linear, k_chain_product
from cgc.backends.cerebras.precision import round_to
from cgc.backends.cerebras.tiles import chain_sum
from cgc.ir import Node, Value


def reads_transposed_tokens(node: Node) -> bool:
    """Whether `node` is matmul(transpose(a, [1, 0]), b) with a [M, N] computed on the wafer and
    b [M, K]: a product that contracts the token axis of two streams (a weight gradient)."""
    if node.op != "matmul" or len(node.inputs) != 2:
        return False
    at, b = node.inputs
    t = at.producer
    return (
        t is not None
        and t.op == "transpose"
        and list(t.attrs["perm"]) == [1, 0]
        and t.inputs[0].producer is not None
        and b.type.rank == 2
        and at.type.rank == 2
        and at.shape[1] == b.shape[0]
    )


def feeds_weight_gradients(value: Value) -> bool:
    """Whether every use of `value` (a transpose's output) is a weight gradient's first operand,
    so the transpose need not move data."""
    return bool(value.users) and all(
        reads_transposed_tokens(u) and u.inputs[0] is value and u.inputs[1] is not value
        for u in value.users
    )


def is_data_gradient(node: Node) -> bool:
    """Whether `node` is matmul(dY [..., N], W [N, K]) with W host data (a parameter) and dY
    computed on the wafer: the data gradient of a linear layer."""
    if node.op != "matmul" or len(node.inputs) != 2:
        return False
    dy, w = node.inputs
    return w.producer is None and w.type.rank == 2 and dy.producer is not None and dy.type.rank >= 2


class DataGradient(Linear):
    """dY @ W with W resident: `Linear`'s stationary dataflow on the transposed weight."""

    # The LM head's data gradient contracts the vocabulary (50,257): a 16-PE chain would give
    # each PE thousands of FMAC vectors per token. Its partial sums are a few values per token,
    # so longer chains (multiples of MAX_CHAIN) cost little traffic.
    max_chain = 16 * MAX_CHAIN

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        self.n = self.in_types[1].shape[1]  # dX's features: W's columns (k is W's rows, N)

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """As `Linear`, with the weight read transposed."""
        return {**super()._tile(rows, cols), "weight": "transposed"}

    def _execute(self, args, tiling):
        dy, w = args
        dx = k_chain_product(dy.reshape(self.m, self.k), w.T, tiling["k_tile"])
        return [round_to(dx, self.precision).reshape(*dy.shape[:-1], self.n)]


class WeightGradient(Kernel):
    """dYᵀ @ X accumulated over the token stream in output-stationary fp32 blocks."""

    def __init__(self, node, machine, precision) -> None:
        super().__init__(node, machine, precision)
        at, x = self.in_types
        self.n, self.m = at.shape  # dY transposed: [N, M tokens]
        self.k = x.shape[1]
        self.b = elem_bytes(x, precision)
        self._options: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}

    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """The number of bands (token groups) that fits in SRAM with the fewest cycles."""
        groups = band_count(
            min(rows, self.m),
            lambda g: self._evaluate(rows, cols, g),
            self.machine.sram_usable_bytes,
        )
        band = rows // groups
        return {
            "kernel": "gemm",
            "style": "outer-product accumulation",
            "rows": rows,
            "cols": cols,
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "token_groups": groups,
            "band_rows": band,
            "m_tile": ceil_div(self.m, groups),
            "n_tile": ceil_div(self.n, band),
            "k_tile": ceil_div(self.k, cols),
            "reduce": "tokens in order into each PE's fp32 block, then bands north to south",
        }

    def _evaluate(self, rows: int, cols: int, groups: int) -> tuple[int, int, int, int]:
        """(compute, fabric, band reduction, sram) with `groups` bands."""
        key = (rows, cols, groups)
        if key not in self._options:
            mach, b = self.machine, self.b
            band = rows // groups
            m_tile = ceil_div(self.m, groups)
            n_tile, k_tile = ceil_div(self.n, band), ceil_div(self.k, cols)
            peak = n_tile * mach.vector_cycles(k_tile, self.precision)
            compute = m_tile * (mach.sustained_cycles(peak) + mach.task_overhead_cycles)
            # Row links carry a band's dY segments; the north band's column links carry every
            # token's X segment on its way to the bands below.
            fabric = max(m_tile * words(n_tile, b), self.m * words(k_tile, b))
            reduce = chain_reduce_cycles(mach, groups, n_tile * k_tile)
            sram = n_tile * k_tile * 4 * (2 if groups > 1 else 1) + 2 * (n_tile + k_tile) * b
            self._options[key] = (compute, fabric, reduce, sram)
        return self._options[key]

    def sram_bytes(self, rows: int, cols: int) -> int:
        """fp32 dW block (and one incoming block to add when bands reduce), token buffers."""
        return self._evaluate(rows, cols, self.tiling(rows, cols)["token_groups"])[3]

    def resident_bytes(self) -> int:
        """dW in fp32 accumulators."""
        return self.n * self.k * 4

    def cost(self, rows: int, cols: int) -> Cost:
        """Per token of a band: n_tile FMAC vectors of k_tile; then the bands' blocks summed."""
        groups = self.tiling(rows, cols)["token_groups"]
        compute, fabric, reduce, _ = self._evaluate(rows, cols, groups)
        m = self.machine
        latency = m.hop_latency_cycles * (rows + cols) + m.task_overhead_cycles + reduce
        return Cost(compute, fabric, latency, max(compute, fabric) + latency)

    def _execute(self, args, tiling):
        at, x = args
        step = tiling["m_tile"]
        partials = (at[:, m0 : m0 + step] @ x[m0 : m0 + step] for m0 in range(0, self.m, step))
        return [round_to(chain_sum(partials), self.precision)]
