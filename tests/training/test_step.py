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


def test_train_step_appends_the_update_to_the_joint_graph() -> None:
    graph = parse(JOINT)
    run_passes(graph, f"autodiff,{SGD}", verify_each=True)
    text = str(graph)
    assert (
        text.splitlines()[0] == "graph @j(%w: f32[2,3], %b: f32[2], %step: i64[], %x: f32[4,3]) {"
    )
    assert text.splitlines()[-2] == "  return %loss, %grad_norm, %lr, %new.w, %new.b"
    # clipping at 1.0 (the default): the update scales the gradient by min(1, 1/(norm + 1e-6))
    assert "  %new.w = add(%w, %mul_" in text and "minimum(" in text
    assert str(parse(text)) == text  # printable and parseable like any graph
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
