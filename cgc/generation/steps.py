"""Step programs: the prefill and decode graphs of one model on one backend, with their cache.

The generation loop drives a step program; the program runs graphs. `prefill(ids)` runs a
block of prompt tokens [B, P] from an empty cache and `decode(ids, past)` one token per
sequence [B, 1] after `past` cached ones; both return the last token's logits [B, vocab].
"""

from __future__ import annotations

from typing import Protocol

import torch

from cgc.errors import InputError
from cgc.ir import Graph, interpret

BACKENDS = ("onnxruntime", "interpreter", "cerebras")


class StepProgram(Protocol):
    """What the generation loop runs."""

    def prefill(self, ids: torch.Tensor) -> torch.Tensor: ...

    def decode(self, ids: torch.Tensor, past: int) -> torch.Tensor: ...


class InterpreterSteps:
    """The step graphs in the IR interpreter, the cache held as torch tensors."""

    def __init__(self, prefill: Graph, decode: Graph) -> None:
        self.graphs = {"prefill": prefill, "decode": decode}
        self.caches = [torch.zeros(v.shape, dtype=v.type.torch_dtype) for v in decode.inputs[2:]]

    def _run(self, kind: str, ids: torch.Tensor, past: int) -> torch.Tensor:
        logits, *self.caches = interpret(self.graphs[kind], ids, torch.tensor([past]), *self.caches)
        return logits

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return self._run("prefill", ids, 0)

    def decode(self, ids: torch.Tensor, past: int) -> torch.Tensor:
        return self._run("decode", ids, past)


def step_program(backend: str, prefill: Graph, decode: Graph, **options) -> StepProgram:
    """The step program of `backend` for these graphs."""
    if backend == "interpreter":
        return InterpreterSteps(prefill, decode)
    if backend == "onnxruntime":
        from cgc.backends.onnxruntime.steps import OrtSteps

        return OrtSteps(prefill, decode, **options)
    if backend == "cerebras":
        from cgc.backends.cerebras.steps import CerebrasSteps

        return CerebrasSteps.compile(prefill, decode, **options)
    raise InputError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
