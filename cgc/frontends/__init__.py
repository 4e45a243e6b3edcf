"""Frontends: bring a model into the cgc IR (PyTorch via torch.export, or an ONNX file)."""

from cgc.frontends.fx import trace
from cgc.frontends.onnx import load_onnx

__all__ = ["load_onnx", "trace"]
