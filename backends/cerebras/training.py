"""The simulated training step: the wafer computes loss and gradients, the host (MemoryX) updates.

A training step graph (cgc.training.step: inputs are the trainable parameters, the optimizer
state, `step` and the batch; outputs the loss, grad_norm, lr and `new.X` for every input X it
updates) is cut at its gradients (cgc.training.split):

- the joint part, (batch) -> (loss, grad.<param> ...) with the parameters as parameters again,
  becomes a wafer program, planned (layer-pipelined or weight streaming), placed and run by
  the simulator, numerics and cycles, in the program's precision from the fp32 master weights
  rounded as they stream in (or as the pipelined regions keep them);
- the update part, (params, state, step, grads) -> (grad_norm, lr, new params, new state): the
  clipping, schedule and optimizer exactly as ONNX Runtime runs them, here with the IR
  interpreter in fp32 on the host, as MemoryX applies them to its fp32 master weights (a
  pipelined plan runs the same elementwise fp32 operations in its regions; only the order of
  the gradient norm's sum may differ).

Mixed precision with loss scaling (cgc.training.loss_scale; on by default for fp16): the wafer's
backward is seeded with the scale S (cgc.passes.autodiff.scale_loss), the host divides the
gradients by S in fp32 and skips the update of a step whose gradients overflowed.

In a data-parallel run (cgc.training.data_parallel) each worker is one system of a cluster:
`WaferGradients` runs the joint part on its share of the batch, the workers sum the gradients
(SwarmX), and the update runs on the host in the interpreter as above.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cgc.backends.cerebras import report
from cgc.backends.cerebras.artifact import compile as compile_program
from cgc.backends.cerebras.cluster import cluster_step
from cgc.backends.cerebras.program import dumps, loads
from cgc.backends.cerebras.simulator import Simulator
from cgc.errors import InputError
from cgc.ir import Graph, interpret
from cgc.passes.autodiff import scale_loss
from cgc.training.loss_scale import DynamicLossScale, all_finite
from cgc.training.split import carried, inputs_to_params, split_step
from cgc.training.step import GRAD

LOSS_SCALE = "loss_scale"  # the joint part's input of the scale (and the checkpoint's entry)
GOOD_STEPS = "loss_scale.good_steps"


class WaferTrainingSession:
    """One training step compiled for a simulated wafer, with the state MemoryX keeps.

    `step(inputs)` runs the program on the batch inputs (and `step`) and applies the update;
    it returns the step graph's scalar outputs (loss, grad_norm, lr), the simulated
    `wafer_cycles` and `wafer_tokens_per_s` of one step, and with loss scaling `loss_scale`
    and `skipped` (1.0 when the update was skipped on overflow); `last_gradients` holds the
    gradients the host received (fp32, unscaled) by `grad.P` name. Carried inputs missing from
    `state` (optimizer state) start at zero; with `in_place` the tensors of `state` follow the
    training, as the other backends' sessions do (cgc.training.runners).
    """

    def __init__(
        self,
        step_graph: Graph,
        state: Mapping[str, torch.Tensor],
        *,
        eval_graph: Graph | None = None,
        target: str = "wse2",
        precision: str = "fp32",
        mode: str = "auto",
        loss_scale: DynamicLossScale | None = None,
        in_place: bool = False,
    ) -> None:
        self.pairs = carried(step_graph)
        joint, self.update, self.params = split_step(step_graph)
        if loss_scale is None and precision == "fp16":
            loss_scale = DynamicLossScale()
        self.loss_scale = loss_scale
        scale_input = scale_loss(joint, LOSS_SCALE) if loss_scale is not None else None
        self.options = {"target": target, "precision": precision, "mode": mode}
        self.program, self.simulator = _simulate(joint, self.options)
        weights = step_graph.weights
        self.frozen = {n: weights[n] for n in self.program["params"] if n in weights}
        self.batch_names = [v.name for v in joint.inputs if v is not scale_input]
        self.report = _estimate(self.program, self.simulator)
        types = {v.name: v.type for v in step_graph.inputs}
        self.state = {
            x: state[x].detach().clone().float()
            if x in state
            else torch.zeros(types[x].shape, dtype=types[x].torch_dtype)
            for x in self.pairs
        }
        self._given = {x: t for x, t in state.items() if x in self.pairs} if in_place else {}
        if self.loss_scale is not None and LOSS_SCALE in state:
            self._load_scale(state)
        self._eval = _Evaluation(eval_graph, self.params, self.options)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {**self.frozen, **{p: self.state[p] for p in self.params}}

    def step(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Run one step on the batch inputs and `step`; returns its scalars (see the class)."""
        batch = [_need(inputs, n) for n in self.batch_names]
        scale = None if self.loss_scale is None else self.loss_scale.scale
        if scale is not None:
            batch.append(torch.tensor(scale, dtype=torch.float32))
        self.simulator.weights = self._weights()
        loss, *grads = self.simulator.run(*batch)
        apply = True
        if scale is not None:
            grads = [g / scale for g in grads]  # fp32 on the host
            apply = self.loss_scale.update(all_finite(grads))
        grads_by_name = {GRAD + p: g for p, g in zip(self.params, grads, strict=True)}
        self.last_gradients = grads_by_name
        feed = {**self.state, **grads_by_name}
        feed |= {n: v for n, v in inputs.items() if n not in feed}
        outputs = interpret(self.update, *(_need(feed, v.name) for v in self.update.inputs))
        metrics = {"loss": float(loss)}
        for value, out in zip(self.update.outputs, outputs, strict=True):
            if value.type.rank == 0:
                metrics[value.name] = float(out)
        if apply:
            named = {v.name: out for v, out in zip(self.update.outputs, outputs, strict=True)}
            for x, new_x in self.pairs.items():
                self.state[x] = named[new_x]
            with torch.no_grad():
                for x, tensor in self._given.items():
                    tensor.copy_(self.state[x])
        metrics |= _metrics(self.report)
        if scale is not None:
            metrics |= {"loss_scale": scale, "skipped": 0.0 if apply else 1.0}
        return metrics

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The evaluation graph's outputs on the wafer, with the current parameters."""
        return self._eval.run(inputs, self._weights())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the parameters and optimizer state, by input name; with loss scaling also
        the scale and its growth counter (`loss_scale`, `loss_scale.good_steps`), so a
        resumed run scales as the uninterrupted one."""
        state = {x: v.clone() for x, v in self.state.items()}
        if self.loss_scale is not None:
            state[LOSS_SCALE] = torch.tensor(self.loss_scale.scale, dtype=torch.float64)
            state[GOOD_STEPS] = torch.tensor(self.loss_scale.good_steps)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the parameters and optimizer state (and the loss scale, when given)."""
        for x in self.state:
            self.state[x] = state[x].detach().clone().float()
        if self.loss_scale is not None and LOSS_SCALE in state:
            self._load_scale(state)

    def _load_scale(self, state: Mapping[str, torch.Tensor]) -> None:
        self.loss_scale.load_state_dict(
            {"scale": float(state[LOSS_SCALE]), "good_steps": int(state[GOOD_STEPS])}
        )


class WaferGradients:
    """The joint part of a data-parallel step (cgc.training.runners.GradientSession) on one
    simulated system: loss and gradients of this worker's share of the batch, from the fp32
    master weights of the host session that updates them (`params`, the interpreter, as
    MemoryX), written into the buffers the workers sum. `run` returns the system's simulated
    `wafer_cycles` and `wafer_tokens_per_s` for its share, and the tokens/s the cluster model
    (cgc.backends.cerebras.cluster) predicts for `systems` of them with SwarmX,
    `wafer_cluster_tokens_per_s`. fp16 is refused: its dynamic loss scale would have to skip
    the update on every worker alike."""

    def __init__(
        self,
        joint: Graph,
        params: Any,  # a cgc.training.runners.InterpreterSession: its `state` is read each run
        outputs: Mapping[str, torch.Tensor],
        *,
        eval_graph: Graph | None = None,
        target: str | None = None,
        precision: str | None = None,
        systems: int = 1,
    ) -> None:
        if precision == "fp16":
            raise InputError(
                "data-parallel training on the wafer runs fp32, cb16 or bf16: fp16's dynamic "
                "loss scaling is not shared between systems"
            )
        self.params = params
        g = joint.copy()
        self.param_names = [v.name for v in g.inputs if v.name in params.state]
        inputs_to_params(g, self.param_names)
        self.options = {
            "target": target or "wse2",
            "precision": precision or "fp32",
            "mode": "auto",
        }
        self.program, self.simulator = _simulate(g, self.options)
        self.frozen = {n: g.weights[n] for n in self.program["params"] if n in g.weights}
        self.batch_names = [v.name for v in g.inputs]
        self.outputs = [outputs[v.name] for v in g.outputs]
        self.report = _estimate(self.program, self.simulator)
        self.metrics = _metrics(self.report)
        self.metrics["wafer_cluster_tokens_per_s"] = cluster_step(self.report, systems)[
            "tokens_per_s"
        ]
        self._eval = _Evaluation(eval_graph, self.param_names, self.options)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {**self.frozen, **{p: self.params.state[p] for p in self.param_names}}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Loss and gradients of the batch `inputs` into the output buffers; the step's
        simulated cycles and tokens/s."""
        self.simulator.weights = self._weights()
        values = self.simulator.run(*(_need(inputs, n) for n in self.batch_names))
        for buffer, value in zip(self.outputs, values, strict=True):
            buffer.copy_(value)
        return dict(self.metrics)

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The evaluation graph's outputs on the wafer, with the current parameters."""
        return self._eval.run(inputs, self._weights())


class _Evaluation:
    """The evaluation graph as a wafer program, planned at its first use (a run may never
    validate)."""

    def __init__(self, graph: Graph | None, params: list[str], options: dict[str, str]) -> None:
        self.graph = graph
        self.params = params
        self.options = options
        self._compiled: tuple[Simulator, list[str]] | None = None

    def run(
        self, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        if self.graph is None:
            raise InputError("this training session was built without an evaluation graph")
        if self._compiled is None:
            g = self.graph.copy()
            inputs_to_params(g, [v.name for v in g.inputs if v.name in self.params])
            _, simulator = _simulate(g, self.options)
            self._compiled = (simulator, [v.name for v in g.inputs])
        simulator, names = self._compiled
        simulator.weights = {**self.graph.weights, **weights}
        return simulator.run(*(_need(inputs, n) for n in names))


def _estimate(program: dict[str, Any], simulator: Simulator) -> dict[str, Any]:
    """The report of a training program with the simulated cycles."""
    return report.estimate(program, simulator.region_cycles, simulator.recompute_cycles or None)


def _metrics(estimate: dict[str, Any]) -> dict[str, float]:
    """A simulated step's metrics: its cycles and the tokens/s of one system."""
    return {
        "wafer_cycles": float(estimate["period_cycles"]),
        "wafer_tokens_per_s": estimate["tokens_per_s"],
    }


def _simulate(graph: Graph, options: dict[str, str]) -> tuple[dict[str, Any], Simulator]:
    """Plan and place `graph` for the wafer; its program and a simulator without weights yet."""
    program = compile_program(graph, {}, **options).program
    return program, Simulator(loads(dumps(program), "program.json"), {})


def _need(inputs: Mapping[str, Any], name: str) -> Any:
    if name not in inputs:
        raise InputError(f"the training step needs input {name!r}")
    return inputs[name]
