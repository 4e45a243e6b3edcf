"""The ONNX Runtime backend: lower the IR to ONNX (weights as external data) and run it on CPU."""

from cgc.backends.onnxruntime.artifact import OrtArtifact, compile, load
from cgc.backends.onnxruntime.export import build_model, to_onnx
from cgc.backends.onnxruntime.lowering import LOWERINGS, OPSET
from cgc.backends.onnxruntime.session import OrtProgram

__all__ = [
    "LOWERINGS",
    "OPSET",
    "OrtArtifact",
    "OrtProgram",
    "build_model",
    "compile",
    "load",
    "to_onnx",
]
