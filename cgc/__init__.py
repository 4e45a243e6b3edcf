"""cgc: a graph compiler toolkit for GPT models.

graph = cgc.trace(module, example_inputs)          # torch.export -> cgc IR
graph = cgc.load_onnx("model.onnx")                # or an ONNX file -> cgc IR
graph = cgc.run_passes(graph, "default")           # fusions
artifact = cgc.compile(module, example_inputs, backend="onnxruntime")
artifact.save("out/model"); cgc.load("out/model").run(*example_inputs)
trainer = cgc.compile_train(module, batch, optimizer=cgc.AdamW(lr=6e-4))
loss = trainer.step(batch); trainer.save("checkpoint")
"""

from typing import Any

from cgc.errors import CgcError

# The API lives in cgc.driver and cgc.training, imported on first use so `cgc --help` does not
# wait for torch.
_DRIVER_API = ("trace", "load_onnx", "run_passes", "compile", "load")
_TRAINING_API = {
    "compile_train": "cgc.training.trainer",
    "AdamW": "cgc.training.optim",
    "SGD": "cgc.training.optim",
    "Schedule": "cgc.training.schedule",
}

__all__ = ["CgcError", *_DRIVER_API, *_TRAINING_API]


def __getattr__(name: str) -> Any:
    if name in _DRIVER_API:
        from cgc import driver

        return getattr(driver, name)
    if name in _TRAINING_API:
        import importlib

        return getattr(importlib.import_module(_TRAINING_API[name]), name)
    raise AttributeError(f"module 'cgc' has no attribute {name!r}")
