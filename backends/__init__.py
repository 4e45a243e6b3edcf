"""Backends: lower the cgc IR to an executable artifact (ONNX Runtime; Cerebras simulator)."""

from cgc.backends.registry import BACKENDS, get_backend

__all__ = ["BACKENDS", "get_backend"]
