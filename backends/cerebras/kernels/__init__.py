"""The wafer kernel library: one kernel per IR op family, chosen by `kernel_for(node)`."""

from cgc.backends.cerebras.kernels.base import MAX_CHAIN, Cost, Kernel
from cgc.backends.cerebras.kernels.registry import KERNELS, kernel_for

__all__ = ["KERNELS", "MAX_CHAIN", "Cost", "Kernel", "kernel_for"]
