"""Cerebras wafer-scale engine backend."""
