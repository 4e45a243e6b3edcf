"""The training step as one graph: (params, optimizer state, step, batch) -> (loss, grad_norm,
lr, new params, new state).

It is built from the joint graph that `autodiff` leaves (a 0-d loss and a `grad.P` output per
trainable parameter P): each trainable parameter becomes an input, the optimizer's state and the
step counter join them, and the clipped, scheduled update of every parameter follows the
backward pass. An output `new.X` is the input `X` of the next step; whatever runs the graph
carries it over. Batch inputs and the parameters that are not trained (masks, folded constants)
stay as the model had them. The `train-step` pass (cgc.passes.train_step) runs this, so the
step is an ordinary graph to print, parse, dump and bisect.
"""

from __future__ import annotations

from collections.abc import Mapping

from cgc.errors import CgcError
from cgc.ir import Graph, TensorType, Value
from cgc.training.optim import Optimizer, clip_grad_norm
from cgc.training.schedule import Schedule

LOSS = "loss"
STEP = "step"  # the number of steps taken before this one (i64 scalar)
GRAD = "grad."  # autodiff's prefix of gradient outputs
NEW = "new."  # the prefix of an output that is the next step's input of the same name


def state_name(state: str, param: str) -> str:
    """The input holding optimizer state `state` (e.g. exp_avg) of parameter `param`."""
    return f"{state}.{param}"


def carried(graph: Graph) -> dict[str, str]:
    """Input name -> the output that replaces it after a step (`X` -> `new.X`)."""
    outputs = {v.name for v in graph.outputs}
    return {v.name: NEW + v.name for v in graph.inputs if NEW + v.name in outputs}


def trainable(graph: Graph) -> list[str]:
    """The parameters a joint graph has gradients for, in output order."""
    return [v.name[len(GRAD) :] for v in graph.outputs if v.name.startswith(GRAD)]


def build_step(
    graph: Graph, optimizer: Optimizer, schedule: Schedule, max_grad_norm: float | None
) -> None:
    """Turn the joint graph (loss, grad.P ...) into the training step, in place."""
    names = trainable(graph)
    loss = graph.outputs[0] if graph.outputs else None
    if loss is None or loss.type.rank != 0 or not names:
        raise CgcError(
            f"graph @{graph.name} is not a joint graph (a 0-d loss, then grad.<param> outputs); "
            "run autodiff before train-step"
        )
    missing = [n for n in names if n not in graph.params]
    if missing:
        raise CgcError(f"grad.{missing[0]} has no parameter {missing[0]} in @{graph.name}")
    if loss.name != LOSS and loss.producer is not None:
        graph.rename(loss, graph.fresh_name(LOSS))
    grads = {n: next(v for v in graph.outputs if v.name == GRAD + n) for n in names}
    batch = list(graph.inputs)
    graph.inputs = []
    params = {n: graph.param_to_input(n) for n in names}
    step = graph.add_input(STEP, TensorType((), "i64"))
    with graph.inserting_before(None):
        outputs = add_update(graph, params, grads, step, optimizer, schedule, max_grad_norm)
    graph.inputs = [*params.values(), *graph.inputs[len(params) + 1 :], step, *batch]
    graph.outputs = [loss, *outputs]


def update_graph(
    params: Mapping[str, TensorType],
    optimizer: Optimizer,
    schedule: Schedule,
    max_grad_norm: float | None,
) -> Graph:
    """The update alone, gradients as inputs `grad.P`: (params, state, step, grads) ->
    (grad_norm, lr, new params, new state). What tests compare with torch.optim, and what runs
    after gradients are summed across data-parallel workers."""
    g = Graph("update")
    values = {n: g.add_input(n, t) for n, t in params.items()}
    grads = {n: g.add_input(GRAD + n, t) for n, t in params.items()}
    step = g.add_input(STEP, TensorType((), "i64"))
    g.outputs = add_update(g, values, grads, step, optimizer, schedule, max_grad_norm)
    g.inputs = [*values.values(), *g.inputs[2 * len(params) + 1 :], step, *grads.values()]
    return g


def add_update(
    g: Graph,
    params: Mapping[str, Value],
    grads: Mapping[str, Value],
    step: Value,
    optimizer: Optimizer,
    schedule: Schedule,
    max_grad_norm: float | None,
) -> list[Value]:
    """Append state inputs and the update of every parameter; returns the outputs
    [grad_norm, lr, new.P ..., new.<state>.P ...]."""
    gradients, norm = clip_grad_norm(g, list(grads.values()), max_grad_norm)
    lr = g.call("mul", g.constant(optimizer.lr, "f64"), schedule.build(g, step))
    new_params, new_state = [], []
    for (name, param), grad in zip(params.items(), gradients, strict=True):
        state = [g.add_input(state_name(s, name), param.type) for s in optimizer.state_names()]
        updated, updated_state = optimizer.update(g, param, grad, state, lr, step)
        new_params.append(_named(g, updated, NEW + name))
        new_state += [_named(g, v, NEW + s.name) for v, s in zip(updated_state, state, strict=True)]
    return [_named(g, norm, "grad_norm"), _named(g, lr, "lr"), *new_params, *new_state]


def _named(g: Graph, value: Value, name: str) -> Value:
    g.rename(value, name)
    return value
