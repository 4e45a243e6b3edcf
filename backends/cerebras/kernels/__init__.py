"""Kernel library of the Cerebras backend: tiling, SRAM and cycle models per op."""
