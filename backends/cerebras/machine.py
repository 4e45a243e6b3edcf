"""The wafer-scale engines cgc targets: fabric geometry, per-PE SRAM and rates, fabric links.

Every constant cites where it comes from (see ../shared/MACHINE_FACTS.md for the sources);
"inferred" marks a value derived from published ones, "assumed" one with no public figure.

One constant is calibrated rather than published: `simd_efficiency`, the fraction of the peak
FMAC rate a PE sustains in a tile loop (vector instruction issue, scalar operand loads, loop
control). It is fitted so that the SUMMA cycle model (kernels/gemm.py) reproduces the one
large published WSE-2 GEMM measurement, 349.0 TFLOP/s for single-precision 33,000 x 33,000
matrices on 750 x 750 PEs (Matsuzaki, Mukunoki, Miyajima, IPSJ JIP 34:132, 2026; SC24
workshop). bench/gemm_fidelity.py prints the model beside that measurement; because the
constant comes from the same point, agreement there checks the arithmetic, not the model.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from fractions import Fraction

from cgc.backends.cerebras.precision import check_precision
from cgc.errors import InputError

# Relative cost of one element of a vector operation, in FMAC-equivalents (inferred: the PE has
# no transcendental unit, so exp/erf/tanh/log are polynomial or Newton evaluations of about this
# many fused multiply-adds; add, mul, max, compare and select are one vector instruction each).
VECTOR_OP_COST = {
    "add": 1,
    "mul": 1,
    "max": 1,
    "select": 1,
    "reciprocal": 6,
    "div": 6,
    "rsqrt": 6,
    "sqrt": 6,
    "exp": 8,
    "log": 10,
    "tanh": 10,
    "sigmoid": 10,
    "sin": 10,  # range reduction and a polynomial, as tanh
    "cos": 10,
    "erf": 12,
    "pow": 20,
}


@dataclass(frozen=True)
class Machine:
    """A wafer: fabric size, the rectangle programs may use, and the per-PE figures."""

    name: str
    fabric_width: int  # PE columns the SDK exposes
    fabric_height: int  # PE rows
    usable_x: int  # origin (west column) of the program rectangle
    usable_y: int  # origin (north row) of the program rectangle
    usable_width: int
    usable_height: int
    sram_bytes: int  # SRAM per PE
    sram_usable_bytes: int  # what a kernel may use (the rest holds code and runtime)
    clock_hz: float
    fmac_per_cycle: dict[str, int] = field(hash=False)  # per PE, by precision
    link_bytes_per_cycle: int  # one 32-bit wavelet per link per cycle per direction
    colors: int  # routable virtual channels
    stream_bytes_per_s: float  # off-wafer (MemoryX) weight-streaming bandwidth
    hop_latency_cycles: int  # one router hop
    task_overhead_cycles: int  # activating a task (per streamed token, per SUMMA step)
    simd_efficiency: float  # calibrated: sustained / peak FMAC rate in tile loops

    @property
    def usable_pes(self) -> int:
        """PEs in the program rectangle."""
        return self.usable_width * self.usable_height

    def peak_flops(self, precision: str) -> float:
        """Dense peak FLOP/s of the usable rectangle (2 FLOP per FMAC)."""
        return (
            2.0 * self.fmac_per_cycle[check_precision(precision)] * self.usable_pes * self.clock_hz
        )

    def vector_cycles(self, length: int, precision: str) -> int:
        """Peak-rate cycles of one vector instruction over `length` elements."""
        rate = self.fmac_per_cycle[precision]
        return -(-length // rate)

    def sustained_cycles(self, peak_cycles: int) -> int:
        """Cycles a tile loop really takes for `peak_cycles` of vector work (rounded up)."""
        num, den = _exact_ratio(self.simd_efficiency)
        return -(-peak_cycles * den // num)


@functools.cache
def _exact_ratio(efficiency: float) -> tuple[int, int]:
    """The efficiency as an exact fraction, so cycle counts are integers and reproducible; cached
    because building the Fraction dominated planning time."""
    eff = Fraction(efficiency).limit_denominator(10_000)
    return eff.numerator, eff.denominator


# Sustained fraction of the FMAC peak (calibrated, see the module docstring): the measured
# 349.0 TFLOP/s is 175.05e6 cycles at 850 MHz for 750 SUMMA steps, 233,400 cycles per step;
# a step's broadcasts take 1,936 + 749 + 20 = 2,705 cycles, leaving 230,695 cycles for
# 44 x 44 x 44 = 85,184 fp32 FMACs: 85,184 / 230,695 = 0.369, rounded to 0.37.
_SIMD_EFFICIENCY = 0.37

WSE2 = Machine(
    name="wse2",
    # 757 x 996 PEs exposed: Cerebras SDK docs, running-system page; csl-examples
    # gemm-collectives_2d commands.sh compiles P=750 with --fabric-dims=757,996.
    fabric_width=757,
    fabric_height=996,
    # Programs start at --fabric-offsets=4,1 and span 750 x 994: memcpy takes 7 columns and
    # 2 rows (csl-examples single-tile-matvec README: "width no bigger than 7 less than the
    # x-dimension of the fabric", 750,994 on a CS-2; offsets from its commands).
    usable_x=4,
    usable_y=1,
    usable_width=750,
    usable_height=994,
    # 48 KB per PE in 8 banks of 6 KB (SDK docs, CSL appendix); about 46 KB usable once code
    # and the runtime are loaded (SDK docs, as summarised in MACHINE_FACTS.md).
    sram_bytes=48 * 1024,
    sram_usable_bytes=46 * 1024,
    # 850 MHz: the SDK's own timing code converts cycles with 0.85 GHz (csl-examples
    # benchmarks/SdkRuntime/bandwidthTest README). Hot Chips summaries quote 1.1 GHz.
    clock_hz=850e6,
    # 16-bit SIMD: 4 FMAC/cycle (Cerebras SDK docs; Andromeda's 120 PF dense for 16 CS-2,
    # Tom's Hardware, is 850,000 PEs x 8 FLOP x 1.1 GHz). fp32: about 1 FMAC/cycle (inferred,
    # MACHINE_FACTS.md).
    # bf16 and cb16 run at the 16-bit rate (assumed).
    fmac_per_cycle={"fp32": 1, "fp16": 4, "bf16": 4, "cb16": 4},
    # One 32-bit wavelet per link per cycle per direction (SDK docs, CSL appendix).
    link_bytes_per_cycle=4,
    # 24 routable colors (SDK docs, CSL appendix).
    colors=24,
    # MemoryX feeds the wafer through the system I/O, 1.2 Tb/s = 12 x 100 GbE = 150 GB/s
    # (Cerebras CS-2 product page); that all of it carries weights is inferred.
    stream_bytes_per_s=150e9,
    # Router forwarding: one cycle per hop (inferred from one wavelet per link per cycle).
    hop_latency_cycles=1,
    # Task activation: tens of cycles for the switch and DSD setup (inferred; no public figure).
    task_overhead_cycles=20,
    simd_efficiency=_SIMD_EFFICIENCY,
)

WSE3 = Machine(
    name="wse3",
    # 762 x 1176 PEs exposed (SDK docs; some systems report 762 x 1172).
    fabric_width=762,
    fabric_height=1176,
    # Same memcpy rule as WSE-2 (7 columns, 2 rows): 755 x 1174 from (4, 1) (inferred).
    usable_x=4,
    usable_y=1,
    usable_width=755,
    usable_height=1174,
    # 48 KB per PE (Cerebras CS-3 product page); usable share as on WSE-2 (assumed).
    sram_bytes=48 * 1024,
    sram_usable_bytes=46 * 1024,
    # Same clock as WSE-2 (assumed; no separate SDK figure).
    clock_hz=850e6,
    # 16-bit SIMD: 8 FMAC/cycle (Cerebras CS-3 product pages and blogs). fp32 is not
    # published: the WSE-2 rate is assumed.
    fmac_per_cycle={"fp32": 1, "fp16": 8, "bf16": 8, "cb16": 8},
    link_bytes_per_cycle=4,  # same fabric link as WSE-2 (SDK docs)
    colors=24,  # SDK docs
    stream_bytes_per_s=150e9,  # 1.2 Tb/s system I/O (Cerebras CS-3 product page)
    hop_latency_cycles=1,  # inferred, as WSE-2
    task_overhead_cycles=20,  # inferred, as WSE-2
    simd_efficiency=_SIMD_EFFICIENCY,  # calibrated on WSE-2, assumed to carry over
)

PRESETS = {"wse2": WSE2, "wse3": WSE3}

_FABRIC = re.compile(r"fabric:(\d+)x(\d+)")
_MAX_FABRIC_SIDE = 4096


def small_fabric(width: int, height: int) -> Machine:
    """A small fabric for tests: all of it usable, WSE-2 per-PE figures."""
    return Machine(
        name=f"fabric:{width}x{height}",
        fabric_width=width,
        fabric_height=height,
        usable_x=0,
        usable_y=0,
        usable_width=width,
        usable_height=height,
        sram_bytes=WSE2.sram_bytes,
        sram_usable_bytes=WSE2.sram_usable_bytes,
        clock_hz=WSE2.clock_hz,
        fmac_per_cycle=dict(WSE2.fmac_per_cycle),
        link_bytes_per_cycle=WSE2.link_bytes_per_cycle,
        colors=WSE2.colors,
        stream_bytes_per_s=WSE2.stream_bytes_per_s,
        hop_latency_cycles=WSE2.hop_latency_cycles,
        task_overhead_cycles=WSE2.task_overhead_cycles,
        simd_efficiency=WSE2.simd_efficiency,
    )


def get_machine(spec: str) -> Machine:
    """The machine a `--target` value names: `wse2`, `wse3` or `fabric:WxH`."""
    if spec in PRESETS:
        return PRESETS[spec]
    match = _FABRIC.fullmatch(spec)
    if match:
        width, height = int(match[1]), int(match[2])
        if 1 <= width <= _MAX_FABRIC_SIDE and 1 <= height <= _MAX_FABRIC_SIDE:
            return small_fabric(width, height)
        raise InputError(
            f"target {spec!r}: fabric sides must be between 1 and {_MAX_FABRIC_SIDE} PEs"
        )
    raise InputError(f"unknown target {spec!r}; use wse2, wse3 or fabric:WxH (e.g. fabric:32x32)")
