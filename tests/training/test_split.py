"""A training step cut at its gradients: the two parts compute what the whole step does."""

import pytest
import torch
from training.test_step import JOINT

from cgc.errors import InputError
from cgc.ir import interpret, parse, verify
from cgc.passes import run_passes
from cgc.training.split import carried, split_step

ADAMW = "train-step{optimizer=adamw,lr=0.5,schedule=constant}"

JOINT_PART = """\
graph @j(%x: f32[4,3]) {
  param trainable %w: f32[2,3]
  param trainable %b: f32[2]
  %y = linear(%x, %w, %b) : f32[4,2]
  %loss = reduce_sum(%y) {axes=[0, 1], keepdim=false} : f32[]
  %seed = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %reshape = reshape(%seed) {shape=[1, 1]} : f32[1,1]
  %expand = expand(%reshape) {shape=[4, 2]} : f32[4,2]
  %transpose = transpose(%expand) {perm=[1, 0]} : f32[2,4]
  %grad.w = matmul(%transpose, %x) : f32[2,3]
  %grad.b = reduce_sum(%expand) {axes=[0], keepdim=false} : f32[2]
  return %loss, %grad.w, %grad.b
}
"""


def _step():
    graph = parse(JOINT)
    run_passes(graph, f"autodiff,{ADAMW}")
    return graph


def test_the_joint_part_is_the_backward_with_the_parameters_as_weights() -> None:
    joint, update, params = split_step(_step())
    assert params == ["w", "b"]
    assert str(joint) == JOINT_PART
    verify(joint)
    verify(update)
    state = ["exp_avg.w", "exp_avg_sq.w", "exp_avg.b", "exp_avg_sq.b"]
    assert [v.name for v in update.inputs] == ["w", "b", *state, "step", "grad.w", "grad.b"]
    assert [v.name for v in update.outputs] == [
        "grad_norm", "lr", "new.w", "new.b", *(f"new.{s}" for s in state),
    ]  # fmt: skip
    assert carried(update) == {n: f"new.{n}" for n in ["w", "b", *state]}


def test_the_parts_compute_exactly_what_the_step_computes() -> None:
    step = _step()
    joint, update, _ = split_step(step)
    gen = torch.Generator().manual_seed(0)
    # uniform in [0, 1): a valid second moment for Adam
    feeds = {v.name: torch.rand(v.shape, generator=gen) for v in step.inputs if v.name != "step"}
    feeds["step"] = torch.tensor(2)
    outputs = interpret(step, *(feeds[v.name] for v in step.inputs))
    whole = {v.name: t for v, t in zip(step.outputs, outputs, strict=True)}
    joint.weights |= {"w": feeds["w"], "b": feeds["b"]}
    loss, grad_w, grad_b = interpret(joint, feeds["x"])
    feeds |= {"grad.w": grad_w, "grad.b": grad_b}
    parts = interpret(update, *(feeds[v.name] for v in update.inputs))
    assert torch.equal(loss, whole["loss"])
    for value, got in zip(update.outputs, parts, strict=True):
        assert torch.equal(got, whole[value.name]), value.name


def test_a_graph_that_is_not_a_step_is_refused() -> None:
    graph = parse(JOINT)
    run_passes(graph, "autodiff")
    with pytest.raises(InputError, match=r"graph @j is not a training step \(a 0-d loss first"):
        split_step(graph)


def test_an_update_reading_the_batch_is_refused() -> None:
    step = _step()
    x = next(v for v in step.inputs if v.name == "x")
    new_b = next(v for v in step.outputs if v.name == "new.b")
    with step.inserting_before(None):
        shifted = step.call("add", new_b, step.call("reduce_sum", x, axes=[0, 1], keepdim=False))
    step.outputs = [shifted if v is new_b else v for v in step.outputs]
    step.rename(new_b, "b_update")
    step.rename(shifted, "new.b")
    with pytest.raises(InputError, match="reads %x, neither a gradient nor the optimizer's state"):
        split_step(step)
