"""The training step as one graph: its signature, its text form, and the debugging tools."""

import torch

from cgc.ir import parse, verify
from cgc.passes import run_passes
from cgc.training.step import carried

JOINT = """\
graph @j(%x: f32[4,3]) {
  param trainable %w: f32[2,3]
  param trainable %b: f32[2]
  %y = linear(%x, %w, %b) : f32[4,2]
  %loss = reduce_sum(%y) {axes=[0, 1], keepdim=false} : f32[]
  return %loss
}
"""

SGD = "train-step{optimizer=sgd,lr=0.5,momentum=0.0,weight-decay=0.0,schedule=constant}"

# autodiff's backward, then the global norm of the gradients, the clipping factor
# min(1, 1/(norm + 1e-6)) (max-grad-norm 1.0 by default), the learning rate, and the update.
STEP = """\
graph @j(%w: f32[2,3], %b: f32[2], %step: i64[], %x: f32[4,3]) {
  %y = linear(%x, %w, %b) : f32[4,2]
  %loss = reduce_sum(%y) {axes=[0, 1], keepdim=false} : f32[]
  %seed = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %reshape = reshape(%seed) {shape=[1, 1]} : f32[1,1]
  %expand = expand(%reshape) {shape=[4, 2]} : f32[4,2]
  %transpose = transpose(%expand) {perm=[1, 0]} : f32[2,4]
  %grad.w = matmul(%transpose, %x) : f32[2,3]
  %grad.b = reduce_sum(%expand) {axes=[0], keepdim=false} : f32[2]
  %mul = mul(%grad.w, %grad.w) : f32[2,3]
  %reduce_sum = reduce_sum(%mul) {axes=[-1], keepdim=false} : f32[2]
  %reduce_sum_1 = reduce_sum(%reduce_sum) {axes=[0], keepdim=false} : f32[]
  %sqrt = sqrt(%reduce_sum_1) : f32[]
  %mul_1 = mul(%sqrt, %sqrt) : f32[]
  %reshape_1 = reshape(%mul_1) {shape=[1]} : f32[1]
  %mul_2 = mul(%grad.b, %grad.b) : f32[2]
  %reduce_sum_2 = reduce_sum(%mul_2) {axes=[0], keepdim=false} : f32[]
  %sqrt_1 = sqrt(%reduce_sum_2) : f32[]
  %mul_3 = mul(%sqrt_1, %sqrt_1) : f32[]
  %reshape_2 = reshape(%mul_3) {shape=[1]} : f32[1]
  %concat = concat(%reshape_1, %reshape_2) {axis=0} : f32[2]
  %reduce_sum_3 = reduce_sum(%concat) {axes=[0], keepdim=false} : f32[]
  %grad_norm = sqrt(%reduce_sum_3) : f32[]
  %constant = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %constant_1 = constant() {dtype="f32", shape=[], value=1e-06} : f32[]
  %add = add(%grad_norm, %constant_1) : f32[]
  %div = div(%constant, %add) : f32[]
  %constant_2 = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %minimum = minimum(%div, %constant_2) : f32[]
  %constant_3 = constant() {dtype="f64", shape=[], value=0.5} : f64[]
  %constant_4 = constant() {dtype="f64", shape=[], value=1.0} : f64[]
  %lr = mul(%constant_3, %constant_4) : f64[]
  %mul_5 = mul(%grad.w, %minimum) : f32[2,3]
  %cast = cast(%lr) {dtype="f32"} : f32[]
  %mul_6 = mul(%mul_5, %cast) : f32[2,3]
  %new.w = sub(%w, %mul_6) : f32[2,3]
  %mul_7 = mul(%grad.b, %minimum) : f32[2]
  %cast_1 = cast(%lr) {dtype="f32"} : f32[]
  %mul_8 = mul(%mul_7, %cast_1) : f32[2]
  %new.b = sub(%b, %mul_8) : f32[2]
  return %loss, %grad_norm, %lr, %new.w, %new.b
}
"""


def test_train_step_appends_the_update_to_the_joint_graph() -> None:
    graph = parse(JOINT)
    run_passes(graph, f"autodiff,{SGD}", verify_each=True)
    assert str(graph) == STEP
    assert str(parse(STEP)) == STEP  # printable and parseable like any graph
    assert carried(graph) == {"w": "new.w", "b": "new.b"}
    verify(graph)


def test_the_step_graph_runs_an_update() -> None:
    from cgc.ir import interpret

    graph = parse(JOINT)
    run_passes(graph, f"autodiff,{SGD[:-1]},max-grad-norm=0.0}}")
    w, b, x = torch.ones(2, 3), torch.zeros(2), torch.arange(12.0).reshape(4, 3)
    loss, norm, lr, new_w, new_b = interpret(graph, w, b, torch.tensor(0), x)
    assert float(loss) == float((x @ w.T + b).sum())
    torch.testing.assert_close(new_w, w - 0.5 * x.sum(0).expand(2, 3))  # dloss/dw = Σ x rows
    torch.testing.assert_close(new_b, b - 0.5 * 4)
    assert float(lr) == 0.5 and float(norm) == float(
        torch.cat([x.sum(0)] * 2 + [torch.full((2,), 4.0)]).norm()
    )
