"""From a model to its step graphs: trace at the cache capacity, optimise, derive with kv-cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cgc.errors import InputError
from cgc.ir import Graph
from cgc.models.context import declared_context


@dataclass
class StepGraphs:
    """The prefill and decode graphs of one model, sharing its weights."""

    prefill: Graph
    decode: Graph

    @property
    def batch(self) -> int:
        return self.decode.inputs[0].shape[0]

    @property
    def prompt_tokens(self) -> int:
        """Tokens per prefill call."""
        return self.prefill.inputs[0].shape[1]

    @property
    def capacity(self) -> int:
        """Cache slots per sequence: the most tokens a sequence can hold."""
        caches = self.decode.inputs[2:]
        return caches[0].shape[2]

    @property
    def vocab(self) -> int:
        return self.decode.outputs[0].shape[-1]


def context_length(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """The positions a model has: from its config or attributes, else its example length."""
    declared = declared_context(module)
    return example_inputs[0].shape[-1] if declared is None else declared


def trace_step_graphs(
    module: torch.nn.Module,
    *,
    batch: int,
    capacity: int,
    prompt_tokens: int,
    pipeline: str = "default",
) -> StepGraphs:
    """Trace `module` on [batch, capacity] token ids, run `pipeline`, derive the step graphs."""
    from cgc.driver import run_passes, trace
    from cgc.passes.kv_cache import derive_step_graphs

    if not 1 <= prompt_tokens <= capacity:
        raise InputError(f"a prefill of {prompt_tokens} tokens does not fit {capacity} slots")
    ids = torch.zeros(batch, capacity, dtype=torch.long)
    graph = run_passes(trace(module, (ids,)), pipeline)
    prefill, decode = derive_step_graphs(graph, prompt_tokens)
    return StepGraphs(prefill, decode)
