"""Generation: step graphs from the kv-cache pass, step programs per backend, sampling, the loop."""

from cgc.generation.build import StepGraphs, context_length, trace_step_graphs
from cgc.generation.loop import Generation, generate
from cgc.generation.sampling import Sampler
from cgc.generation.steps import InterpreterSteps, step_program

__all__ = [
    "Generation",
    "InterpreterSteps",
    "Sampler",
    "StepGraphs",
    "context_length",
    "generate",
    "step_program",
    "trace_step_graphs",
]
