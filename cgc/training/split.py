"""A training step graph cut at its gradients: the joint part (batch -> loss, grad.P) and the
update (P, optimizer state, step, grad.P -> grad_norm, lr, new.X).

What runs the backward somewhere else than the update needs this cut: a wafer computes the
joint part while the host (MemoryX) updates the fp32 master weights; data-parallel workers
each compute the joint part and sum the gradients before one update. Both parts are ordinary
graphs sliced out of the one step graph that `train-step` builds, so the clipping, schedule
and optimizer are exactly those every other backend runs.
"""

from __future__ import annotations

from cgc.errors import InputError
from cgc.ir import Graph
from cgc.training.step import GRAD, carried

__all__ = ["carried", "inputs_to_params", "split_step"]


def split_step(step: Graph) -> tuple[Graph, Graph, list[str]]:
    """The step graph's joint part (batch -> loss, grad.P, the P as trainable parameters), its
    update part (P, state, step, grad.P -> the other outputs) and the trained parameters P, in
    gradient order."""
    pairs = carried(step)
    values = {v.name: v for v in step.values()}
    params = [
        name[len(GRAD) :] for name in values if name.startswith(GRAD) and name[len(GRAD) :] in pairs
    ]
    if not params or not step.outputs or step.outputs[0].type.rank != 0:
        raise InputError(
            f"graph @{step.name} is not a training step (a 0-d loss first, grad.<param> values "
            "and new.<param> outputs); build it with the autodiff and train-step passes"
        )
    return _joint(step, params), _update(step, params, set(pairs)), params


def inputs_to_params(g: Graph, names: list[str]) -> None:
    """Make the inputs `names` trainable parameters of the same name (a wafer loads them as
    weights), and drop the inputs nothing reads."""
    values = {v.name: v for v in g.inputs}
    for name in names:
        old = values[name]
        g.rename(old, g.fresh_name(f"{name}.input"))
        g.replace_all_uses(old, g.add_param(name, old.type, trainable=True))
    g.inputs = [v for v in g.inputs if v.users]


def _joint(step: Graph, params: list[str]) -> Graph:
    g = step.copy()
    values = {v.name: v for v in g.values()}
    g.outputs = [values[step.outputs[0].name], *(values[GRAD + p] for p in params)]
    _prune(g)
    inputs_to_params(g, params)
    return g


def _update(step: Graph, params: list[str], carried_inputs: set[str]) -> Graph:
    g = step.copy()
    values = {v.name: v for v in g.values()}
    for name in params:
        grad = values[GRAD + name]
        g.rename(grad, g.fresh_name(f"{grad.name}.joint"))
        g.replace_all_uses(grad, g.add_input(GRAD + name, grad.type))
    g.outputs = g.outputs[1:]
    _prune(g)
    g.inputs = [v for v in g.inputs if v.users]
    stray = [
        v.name
        for v in g.inputs
        if v.name not in carried_inputs and not v.name.startswith(GRAD) and v.type.rank
    ]
    if stray:
        raise InputError(
            f"the update of training step @{step.name} reads %{stray[0]}, neither a gradient "
            "nor the optimizer's state; the step cannot be split at its gradients"
        )
    return g


def _prune(g: Graph) -> None:
    """Erase the nodes no output needs."""
    outputs = {id(v) for v in g.outputs}
    for node in reversed(list(g.nodes)):
        if all(not v.users and id(v) not in outputs for v in node.outputs):
            g.erase_node(node)
