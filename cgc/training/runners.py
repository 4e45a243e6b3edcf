"""What executes a training step graph: the IR interpreter, or a backend's training session.

Both keep the parameters and optimizer state between steps and feed each step's outputs
`new.X` back as its inputs `X` (cgc.training.step); the training loop only hands them batches.
Data-parallel training (cgc.training.data_parallel) runs a step cut at its gradients: a session
for the update part, and a gradient session for the joint part (batch -> loss, grad.P) that
reads the update session's live parameters and writes into buffers it is given. On the wafer
the update runs on the host in the interpreter (MemoryX), as in cgc.backends.cerebras.training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from cgc.errors import InputError
from cgc.ir import Graph, interpret
from cgc.training.step import carried

INTERPRETER = "interpreter"
BACKENDS = (INTERPRETER, "onnxruntime", "cerebras")
UPDATED_BY = {"cerebras": INTERPRETER}  # where a split step's update runs, if not the backend


class StepSession(Protocol):
    """A step graph with live state."""

    def step(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Run one step on the batch inputs and `step`; the scalar outputs (loss, ...)."""

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The evaluation graph's outputs on the current parameters."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the parameters and optimizer state, by input name."""

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the parameters and optimizer state."""


class InterpreterSession:
    """Runs the step graph with the ops' reference implementations (the ground truth)."""

    def __init__(
        self,
        step_graph: Graph,
        state: Mapping[str, torch.Tensor],
        eval_graph: Graph | None,
        in_place: bool = False,
    ) -> None:
        self.graph = step_graph
        self.eval_graph = eval_graph
        self.pairs = carried(step_graph)
        self._given = {x: t for x, t in state.items() if x in self.pairs} if in_place else {}
        types = {v.name: v.type for v in step_graph.inputs}
        self.state = {
            x: state[x].detach().clone()
            if x in state
            else torch.zeros(types[x].shape, dtype=types[x].torch_dtype)
            for x in self.pairs
        }
        self._scalars = [v.name for v in step_graph.outputs if v.type.rank == 0]

    def _run(self, graph: Graph, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {**inputs, **self.state}
        missing = [v.name for v in graph.inputs if v.name not in feeds]
        if missing:
            raise InputError(f"the training step needs input {missing[0]!r}")
        outputs = interpret(graph, *(feeds[v.name] for v in graph.inputs))
        return dict(zip([v.name for v in graph.outputs], outputs, strict=True))

    def step(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        outputs = self._run(self.graph, inputs)
        self.state = {x: outputs[new] for x, new in self.pairs.items()}
        with torch.no_grad():
            for x, tensor in self._given.items():
                tensor.copy_(self.state[x])
        return {name: float(outputs[name]) for name in self._scalars}

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        if self.eval_graph is None:
            raise InputError("this training session was built without an evaluation graph")
        return list(self._run(self.eval_graph, inputs).values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {x: t.clone() for x, t in self.state.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = {x: state[x].detach().clone() for x in self.pairs}


class GradientSession(Protocol):
    """The joint part of a split step, reading the parameters of the session that updates them."""

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Compute the loss and gradients of the batch inputs into the output buffers; the
        step's metrics besides them (a simulated wafer's cycles), if any."""

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The evaluation graph's outputs on the current parameters, in this backend."""


class InterpreterGradients:
    """The joint graph in the interpreter, on the live parameters of an InterpreterSession."""

    def __init__(
        self, joint: Graph, params: InterpreterSession, outputs: Mapping[str, torch.Tensor]
    ) -> None:
        self.graph = joint
        self.params = params
        self.outputs = [outputs[v.name] for v in joint.outputs]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        values = self.params._run(self.graph, inputs).values()
        for buffer, value in zip(self.outputs, values, strict=True):
            buffer.copy_(value)
        return {}

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return self.params.evaluate(inputs)


def open_gradients(
    backend: str,
    joint: Graph,
    params: StepSession,
    outputs: Mapping[str, torch.Tensor],
    *,
    threads: int | None = None,
    eval_graph: Graph | None = None,
    target: str | None = None,
    precision: str | None = None,
    systems: int = 1,
) -> GradientSession:
    """Run `joint` (parameters as inputs, then batch inputs -> loss, grad.P) on `backend`, with
    the parameters of `params` (the session running the update, on UPDATED_BY's backend) and
    into `outputs` by name. The wafer plans `eval_graph` itself, on `target` in `precision`,
    and predicts the tokens/s of a cluster of `systems`; the others evaluate in `params`."""
    if backend == INTERPRETER:
        return InterpreterGradients(joint, params, outputs)
    if backend == "onnxruntime":
        from cgc.backends.onnxruntime.training import OrtGradients

        return OrtGradients(joint, params, outputs, threads=threads)
    if backend == "cerebras":
        from cgc.backends.cerebras.training import WaferGradients

        return WaferGradients(
            joint,
            params,
            outputs,
            eval_graph=eval_graph,
            target=target,
            precision=precision,
            systems=systems,
        )
    raise InputError(f"unknown training backend {backend!r}; choose from {', '.join(BACKENDS)}")


def open_session(
    backend: str,
    step_graph: Graph,
    state: Mapping[str, torch.Tensor],
    eval_graph: Graph | None = None,
    *,
    threads: int | None = None,
    in_place: bool = False,
    target: str | None = None,
    precision: str | None = None,
) -> StepSession:
    """A session running `step_graph` on `backend` (one of BACKENDS), starting from `state`;
    carried inputs missing from it (optimizer state) start at zero. With `in_place` the
    tensors of `state` follow the training (ORT updates them as its buffers). `target` and
    `precision` choose the simulated wafer of the cerebras backend (cgc.backends.cerebras.training)
    [wse2, fp32]."""
    wafer = {k: v for k, v in {"target": target, "precision": precision}.items() if v}
    if wafer and backend != "cerebras":
        raise InputError(f"--{', --'.join(wafer)} apply to the cerebras backend, not {backend}")
    if backend == "cerebras":
        from cgc.backends.cerebras.training import WaferTrainingSession

        return WaferTrainingSession(
            step_graph, state, eval_graph=eval_graph, in_place=in_place, **wafer
        )
    if backend == INTERPRETER:
        return InterpreterSession(step_graph, state, eval_graph, in_place)
    if backend == "onnxruntime":
        from cgc.backends.onnxruntime.training import OrtTrainingSession

        return OrtTrainingSession(
            step_graph, state, eval_graph=eval_graph, threads=threads, in_place=in_place
        )
    raise InputError(f"unknown training backend {backend!r}; choose from {', '.join(BACKENDS)}")
