"""Debugging and numerics tools: output comparison against a reference."""

from cgc.debug.numerics import Comparison, compare, compare_all

__all__ = ["Comparison", "compare", "compare_all"]
