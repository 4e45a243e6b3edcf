"""The wafer cycle model beside the one published large WSE-2 GEMM measurement.

Matsuzaki, Mukunoki and Miyajima (IPSJ JIP 34:132, 2026; SC24 workshop version) measured
349.0 TFLOP/s for single-precision 33,000 x 33,000 matrices on 750 x 750 PEs of a CS-2, and a
weak-scaling efficiency of 1.00. cgc's SUMMA kernel (backends/cerebras/kernels/gemm.py)
predicts the cycles of the same GEMM on `wse2`; TFLOP/s = 2·n³ / (cycles / clock).

The machine's sustained-SIMD efficiency (backends/cerebras/machine.py, 0.37) is calibrated on
this very measurement, so agreement there checks the model's arithmetic, not its predictive
power. The weak-scaling rows (the same 44 x 44 x 44 tiles per PE on P x P PEs) are not fitted:
the model predicts their efficiency from broadcast hops alone.

    python bench/gemm_fidelity.py      # exit status 1 when the prediction is off by > 15 %
"""

from __future__ import annotations

import sys

from cgc.backends.cerebras import Cost, Kernel, Machine, get_machine, kernel_for
from cgc.ir import Graph, TensorType

PUBLISHED_TFLOPS = 349.0
N, PES = 33_000, 750
TARGET = 0.15


def gemm_tflops(n: int, side: int, machine: Machine) -> tuple[float, Cost, Kernel]:
    """Predicted TFLOP/s of an fp32 n x n GEMM on side x side PEs, with its cost and tiling."""
    g = Graph("gemm")
    a = g.add_input("a", TensorType((n, n), "f32"))
    b = g.add_input("b", TensorType((n, n), "f32"))
    kernel = kernel_for(g.call("matmul", a, b).producer, machine, "fp32")
    cost = kernel.cost(side, side)
    return 2 * n**3 / (cost.total / machine.clock_hz) / 1e12, cost, kernel


def main() -> int:
    machine = get_machine("wse2")
    tflops, cost, kernel = gemm_tflops(N, PES, machine)
    t = kernel.tiling(PES, PES)
    sram = kernel.sram_bytes(PES, PES)
    ratio = tflops / PUBLISHED_TFLOPS
    print(
        f"fp32 GEMM, n = {N:,}, on {PES} x {PES} PEs of {machine.name} "
        f"({machine.clock_hz / 1e6:.0f} MHz)"
    )
    print(
        f"  tiles per PE   {t['m_tile']} x {t['k_tile']} x {t['n_tile']}, {t['steps']} SUMMA "
        f"steps, {sram:,} of {machine.sram_usable_bytes:,} SRAM bytes"
    )
    print(
        f"  cycles         {cost.total:,} = compute {cost.compute:,} + broadcast "
        f"{cost.fabric:,} + launch {cost.latency:,}"
    )
    print(f"  time           {cost.total / machine.clock_hz:.4f} s")
    print(f"  predicted      {tflops:6.1f} TFLOP/s")
    print(f"  published      {PUBLISHED_TFLOPS:6.1f} TFLOP/s (Matsuzaki et al., measured)")
    within = abs(ratio - 1) <= TARGET
    print(
        f"  ratio          {ratio:.3f} (target: within {TARGET:.0%}: {'yes' if within else 'NO'})"
    )
    print(f"  calibrated     simd_efficiency = {machine.simd_efficiency} (fitted on this point)")
    print()
    tile = N // PES
    print(f"weak scaling, {tile}^3 tiles per PE (published efficiency 1.00; not fitted)")
    print(f"  {'P x P':>9}  {'n':>7}  {'TFLOP/s':>8}  {'per-PE efficiency':>17}")
    base = None
    for side in (50, 150, 300, 500, 750):
        rate, _, _ = gemm_tflops(tile * side, side, machine)
        per_pe = rate / side**2
        base = base or per_pe
        print(f"  {side:>4} x {side:<3}  {tile * side:>7,}  {rate:8.1f}  {per_pe / base:17.3f}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
