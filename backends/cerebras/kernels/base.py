"""What every wafer kernel answers for one IR node placed on a rows x cols PE rectangle.

A kernel is made for one node and one target (machine and precision) and sees only types and
attributes (weights may be meta): how it tiles a rectangle (`tiling`, plain data for
program.json), the SRAM one PE needs (`sram_bytes`), the cycles of one pass over the node's
whole input (`cost`/`cycles`), and the result of running the tiles in the stated order and
precision (`execute`).

Data is a stream of rows ("tokens": every axis but the last). Kernels run as pipelines: a PE
processes one token while the fabric moves the next, so a kernel's time is the larger of its
busiest PE's arithmetic and its busiest link's wavelets, plus the fill/drain latency. Reductions
that cross PEs run as chains in a fixed order, which `execute` reproduces exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cgc.backends.cerebras.machine import Machine
from cgc.backends.cerebras.precision import BYTES, check_precision, round_to
from cgc.errors import InputError
from cgc.ir import Node, TensorType, get_op

# Longest partial-sum chain a GEMM builds along a row. Longer chains buy little on the wafer
# (every hop forwards a stream of fp32 partial sums) and make exact emulation of the chain
# order cost one full [tokens, N] add per hop in the simulator; further PEs split independent
# outputs or tokens instead.
MAX_CHAIN = 16


# A tiling that needs more SRAM must be this much faster to be chosen: more copies of weights
# or keys that save a few per-token task launches are not worth the SRAM headroom they take.
SLACK = 0.02


def pick_tiling(fitting: list[tuple], spilling: list[tuple]) -> dict[str, Any]:
    """Of (cycles, sram, order, tiling) options that fit, the least SRAM within SLACK of the
    fewest cycles (ties: smaller `order`); with none, the (sram, order, tiling) with least SRAM."""
    if fitting:
        fastest = min(c[0] for c in fitting)
        near = [c[1:] for c in fitting if c[0] <= fastest * (1 + SLACK)]
        return min(near, key=lambda c: c[:2])[-1]
    return min(spilling, key=lambda c: c[:2])[-1]


def band_count(most: int, evaluate: Callable[[int], tuple[int, int, int, int]], budget: int) -> int:
    """Of 1, 2, 4, ... up to `most` bands (token groups accumulating apart, then reduced), the
    count pick_tiling prefers; evaluate(bands) gives (compute, fabric, band reduction, sram)."""
    fitting, spilling = [], []
    groups = 1
    while groups <= most:
        compute, fabric, reduce, sram = evaluate(groups)
        option = (sram, groups, groups)
        if sram <= budget:
            fitting.append((max(compute, fabric) + reduce, *option))
        else:
            spilling.append(option)
        groups *= 2
    return pick_tiling(fitting, spilling)


def ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for non-negative integers."""
    return -(-a // b)


def row_layout(m: int, d: int, rows: int, cols: int) -> dict[str, int]:
    """The row kernels' tiling: `m` tokens over the rows (m_tile each), the last axis `d` over a
    row's columns (d_tile each), its `chain` the PEs of a row that hold a slice."""
    d_tile = ceil_div(d, cols)
    return {
        "rows": rows,
        "cols": cols,
        "m": m,
        "d": d,
        "m_tile": ceil_div(m, rows),
        "d_tile": d_tile,
        "chain": ceil_div(d, d_tile),
    }


def elem_bytes(t: TensorType, precision: str) -> int:
    """Bytes of one element on the wafer: the precision for floats, one wavelet otherwise."""
    return BYTES[precision] if t.is_float else 4


def words(elements: int, nbytes: int) -> int:
    """32-bit wavelets that carry `elements` values of `nbytes` bytes (16-bit values pair up)."""
    return ceil_div(elements * nbytes, 4)


def chain_reduce_cycles(machine: Machine, parts: int, block: int) -> int:
    """Cycles to sum `parts` partial blocks of `block` fp32 values along a chain of PEs.

    The blocks stream through the chain in pieces, each PE adding its own as they pass (as a
    GEMM's partial sums do), so the time is one block's adds (or its wavelets, if more) plus
    a hop and a task activation per further part.
    """
    if parts <= 1:
        return 0
    m = machine
    block_time = max(block, m.sustained_cycles(m.vector_cycles(block, "fp32")))
    return block_time + (parts - 1) * (m.hop_latency_cycles + m.task_overhead_cycles)


@dataclass(frozen=True)
class Cost:
    """Cycles of one pass of a kernel over its whole input on one rectangle."""

    compute: int  # the busiest PE's arithmetic, at the sustained SIMD rate, with task overheads
    fabric: int  # wavelets over the busiest link
    latency: int  # what does not overlap: fill and drain hops, kernel launch
    total: int


class Kernel(ABC):
    """A wafer kernel for one IR node on one target (subclasses implement one op family)."""

    # Node-input indices held resident in SRAM (weights, token-invariant operands); `execute`
    # receives those tensors as `weights` and the streamed ones as `inputs`.
    weight_slots: tuple[int, ...] = ()
    # A free kernel is a relabelling of the stream or a routing choice: it takes no PEs.
    free: bool = False
    # Data movement (free kernels, transposes) passes values through exactly, unrounded.
    moves_data: bool = False

    def __init__(self, node: Node, machine: Machine, precision: str) -> None:
        self.op = node.op
        self.machine = machine
        self.precision = check_precision(precision)
        self.in_types: tuple[TensorType, ...] = tuple(v.type for v in node.inputs)
        self.out_types: tuple[TensorType, ...] = tuple(v.type for v in node.outputs)
        self.attrs: dict[str, Any] = dict(node.attrs)
        self.where = node.meta.get("source") or node.meta.get("scope") or f"%{node.outputs[0].name}"
        self._tilings: dict[tuple[int, int], dict[str, Any]] = {}
        # Rounded copies of resident operands by slot: weights are rounded once per program.
        self._rounded: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    # -- what subclasses define ----------------------------------------------------------------

    @abstractmethod
    def _tile(self, rows: int, cols: int) -> dict[str, Any]:
        """The tiling on a rows x cols rectangle, as plain data for program.json."""

    @abstractmethod
    def sram_bytes(self, rows: int, cols: int) -> int:
        """SRAM the busiest PE needs: resident operands, stream buffers, fp32 partial sums."""

    @abstractmethod
    def cost(self, rows: int, cols: int) -> Cost:
        """Cycles of one pass over the node's input, split into compute, fabric and latency."""

    @abstractmethod
    def _execute(self, args: list[torch.Tensor], tiling: dict[str, Any]) -> list[torch.Tensor]:
        """The outputs from operands already rounded to the precision (see `execute`)."""

    # -- shared behaviour ----------------------------------------------------------------------

    def tiling(self, rows: int, cols: int) -> dict[str, Any]:
        """How the node's tensors are split over a rows x cols rectangle (JSON-ready)."""
        if not self.free and (rows < 1 or cols < 1):
            raise InputError(
                f"{self.op} at {self.where}: a kernel needs at least a 1x1 rectangle, "
                f"got {rows}x{cols}"
            )
        if (rows, cols) not in self._tilings:
            self._tilings[rows, cols] = self._tile(rows, cols)
        return dict(self._tilings[rows, cols])

    def cycles(self, rows: int, cols: int) -> int:
        """Total cycles of one pass over the node's input."""
        return self.cost(rows, cols).total

    def flops(self) -> int:
        """FLOPs of the node, as the IR op registry counts them."""
        return get_op(self.op).flops(self.in_types, self.out_types, self.attrs)

    def weight_bytes(self) -> int:
        """Bytes of the resident operands (what weight streaming must move)."""
        return sum(
            self.in_types[i].numel * elem_bytes(self.in_types[i], self.precision)
            for i in self.weight_slots
        )

    def resident_bytes(self) -> int:
        """Bytes the rectangle must hold at once, whatever its shape (a floor for min_rect)."""
        return self.weight_bytes()

    def fits(self, rows: int, cols: int) -> bool:
        """Whether a rows x cols rectangle holds the kernel within each PE's usable SRAM."""
        return self.sram_bytes(rows, cols) <= self.machine.sram_usable_bytes

    def min_rect(self) -> tuple[int, int] | None:
        """The smallest (rows, cols) inside the usable area whose PEs hold the kernel.

        None when the whole usable area does not fit (then no part of it does: spreading a
        kernel wider never needs more SRAM per PE overall, though tile rounding and chain
        choices make SRAM use fall unevenly). Among equal areas the squarer one wins, then
        fewer rows. For each row count the column count is scanned upward from the bound
        `resident_bytes` gives, stopping once a rectangle cannot beat the best so far.
        """
        if self.free:
            return (0, 0)
        key = (
            type(self),
            self.in_types,
            self.out_types,
            repr(sorted(self.attrs.items())),
            self.machine,
            self.precision,
        )
        if key not in _MIN_RECTS:  # identical layers share one search
            _MIN_RECTS[key] = self._search_min_rect()
        return _MIN_RECTS[key]

    def min_pes(self) -> int | None:
        """PEs in `min_rect` (0 for a free kernel, None when nothing fits)."""
        rect = self.min_rect()
        return None if rect is None else rect[0] * rect[1]

    def execute(
        self,
        inputs: Sequence[torch.Tensor],
        weights: Sequence[torch.Tensor],
        rows: int,
        cols: int,
        tiling: dict[str, Any] | None = None,
    ) -> list[torch.Tensor]:
        """Run the tiles: streamed `inputs` and resident `weights` (each in node-input order).

        Operands are rounded to the precision (resident ones once, while the same tensor comes
        back), products accumulate in fp32, cross-PE reductions follow the tiling's chain
        order, and outputs are rounded to the precision; data movement passes values unchanged. A
        `tiling` read from a program must equal the one this kernel makes for the rectangle.
        """
        expected = self.tiling(rows, cols)
        if tiling is not None and tiling != expected:
            raise InputError(
                f"{self.op} at {self.where}: the program's tiling does not match a "
                f"{rows}x{cols} rectangle; recompile the program"
            )
        args = self._merge(inputs, weights)
        if not self.moves_data:
            args = [
                self._resident(i, t) if i in self.weight_slots else round_to(t, self.precision)
                for i, t in enumerate(args)
            ]
        with torch.no_grad():
            outs = self._execute(args, expected)
        return [o.to(t.torch_dtype) for o, t in zip(outs, self.out_types, strict=True)]

    # -- helpers -------------------------------------------------------------------------------

    def _resident(self, slot: int, t: torch.Tensor) -> torch.Tensor:
        cached = self._rounded.get(slot)
        if cached is None or cached[0] is not t or cached[1] != t._version:
            cached = (t, t._version, round_to(t, self.precision))
            self._rounded[slot] = cached
        return cached[2]

    def _merge(
        self, inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        n = len(self.in_types)
        streamed = [i for i in range(n) if i not in self.weight_slots]
        if len(inputs) != len(streamed) or len(weights) != len(self.weight_slots):
            raise InputError(
                f"{self.op} at {self.where}: expected {len(streamed)} inputs and "
                f"{len(self.weight_slots)} weights, got {len(inputs)} and {len(weights)}"
            )
        args: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        for i, t in zip(streamed, inputs, strict=True):
            args[i] = t
        for i, t in zip(self.weight_slots, weights, strict=True):
            args[i] = t
        for i, (t, want) in enumerate(zip(args, self.in_types, strict=True)):
            if tuple(t.shape) != want.shape:
                raise InputError(
                    f"{self.op} at {self.where}: operand {i} should be {want}, "
                    f"got shape {list(t.shape)}"
                )
        return args

    def _search_min_rect(self) -> tuple[int, int] | None:
        m = self.machine
        if not self.fits(m.usable_height, m.usable_width):
            return None
        floor = self.resident_bytes()
        best: tuple[int, int, int, int] | None = None  # (area, |rows - cols|, rows, cols)
        for rows in range(1, m.usable_height + 1):
            if best is not None and rows > best[0]:
                break
            cols = max(1, ceil_div(floor, rows * m.sram_usable_bytes))
            last = m.usable_width if best is None else min(m.usable_width, best[0] // rows)
            while cols <= last and not self.fits(rows, cols):
                cols += 1
            if cols <= last:
                candidate = (rows * cols, abs(rows - cols), rows, cols)
                best = candidate if best is None else min(best, candidate)
        return None if best is None else (best[2], best[3])


_MIN_RECTS: dict[tuple, tuple[int, int] | None] = {}
