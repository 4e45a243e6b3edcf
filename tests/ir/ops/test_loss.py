"""Loss ops: cross_entropy and cross_entropy_grad against torch (incl. ignored and all-ignored
rows), their decompositions, the VJP rule, and the gather / logsumexp primitive forms."""

import re

import pytest
import torch
import torch.nn.functional as F

from cgc.errors import IRError
from cgc.ir import Graph, TensorType, get_op, interpret, parse, verify
from cgc.ir.ops import loss

N, V = 5, 7
TARGETS = {
    "some ignored": torch.tensor([1, -1, 6, 0, -1]),
    "none ignored": torch.tensor([1, 2, 6, 0, 3]),
    "all ignored": torch.full((N,), -1),
}


def _op_graph(op: str, reduction: str, grad: bool = False) -> Graph:
    dloss = ", %d: f32[]" if grad else ""
    out = f"f32[{N},{V}]" if grad else "f32[]"
    return parse(
        f"graph @g(%x: f32[{N},{V}], %t: i64[{N}]{dloss}) {{\n"
        f"  %y = {op}(%x, %t{', %d' if grad else ''}) "
        f'{{ignore_index=-1, reduction="{reduction}"}} : {out}\n  return %y\n}}\n'
    )


def _decomposed(g: Graph) -> Graph:
    (node,) = g.nodes
    with g.inserting_before(node, node.meta):
        (new,) = get_op(node.op).decompose(g, node.inputs, node.attrs)
    g.replace_all_uses(node.output, new)
    g.erase_node(node)
    verify(g)
    return g


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", sorted(TARGETS))
def test_cross_entropy_matches_torch_and_its_decomposition(reduction: str, case: str) -> None:
    x, t = torch.randn(N, V, generator=torch.Generator().manual_seed(0)), TARGETS[case]
    want = F.cross_entropy(x, t, ignore_index=-1, reduction=reduction)
    g = _op_graph("cross_entropy", reduction)
    (got,) = interpret(g, x, t)
    (decomposed,) = interpret(_decomposed(g), x, t)
    torch.testing.assert_close(got, want, equal_nan=True)
    torch.testing.assert_close(decomposed, want, equal_nan=True, atol=1e-6, rtol=1e-6)
    if case == "all ignored":  # torch: NaN for the mean over nothing, 0 for the sum
        assert got.isnan().item() == (reduction == "mean")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", sorted(TARGETS))
def test_cross_entropy_grad_matches_autograd(reduction: str, case: str) -> None:
    x = torch.randn(N, V, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t, dloss = TARGETS[case], torch.tensor(1.7)
    (F.cross_entropy(x, t, ignore_index=-1, reduction=reduction) * dloss).backward()
    g = _op_graph("cross_entropy_grad", reduction, grad=True)
    (got,) = interpret(g, x.detach(), t, dloss)
    (decomposed,) = interpret(_decomposed(g), x.detach(), t, dloss)
    torch.testing.assert_close(got, x.grad, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(decomposed, x.grad, atol=1e-7, rtol=1e-6)
    if (t == -1).any():
        assert got[t == -1].abs().max().item() == 0


def test_vjp_of_cross_entropy_is_cross_entropy_grad() -> None:
    g = _op_graph("cross_entropy", "sum")
    (node,) = g.nodes
    dloss = g.add_input("dloss", TensorType((), "f32"))
    with g.inserting_before(None):
        dx, dt = get_op("cross_entropy").vjp(g, node, [dloss])
    assert dt is None
    grad = dx.producer
    assert grad.op == "cross_entropy_grad" and grad.inputs == [*node.inputs, dloss]
    assert grad.attrs == {"ignore_index": -1, "reduction": "sum"}
    assert get_op("cross_entropy").vjp(g, node, [None]) == [None, None]
    assert not get_op("cross_entropy_grad").differentiable


@pytest.mark.parametrize(
    "logits, targets, attrs, message",
    [
        ("f32[5,7,2]", "i64[5]", {}, "logits must be a float [N, V] tensor"),
        ("i64[5,7]", "i64[5]", {}, "logits must be a float [N, V] tensor"),
        ("f32[5,7]", "f32[5]", {}, "targets must be i64 or i32 [5]"),
        ("f32[5,7]", "i64[4]", {}, "targets must be i64 or i32 [5]"),
        ("f32[5,7]", "i64[5]", {"reduction": "none"}, "reduction must be 'mean' or 'sum'"),
        ("f32[5,7]", "i64[5]", {"ignore_index": 1.5}, "ignore_index must be an integer"),
    ],
)
def test_cross_entropy_checks_its_operands(logits, targets, attrs, message) -> None:
    def t(spec: str) -> TensorType:
        dtype, dims = spec.rstrip("]").split("[")
        return TensorType(tuple(int(d) for d in dims.split(",")), dtype)

    op = get_op("cross_entropy")
    with pytest.raises(IRError, match=re.escape(message)):
        op.infer([t(logits), t(targets)], op.complete_attrs(attrs))


@pytest.mark.parametrize(
    "x_shape, axis, index_shape",
    [((4, 6), 1, (4, 1)), ((4, 6), 0, (1, 6)), ((3, 5, 4), 1, (2, 3, 4)), ((4, 6), 1, (3, 2))],
    ids=["one per row", "along rows", "several per slice", "index smaller off the axis"],
)
def test_gather_matches_torch(x_shape, axis, index_shape) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(x_shape, generator=gen)
    index = torch.randint(0, x_shape[axis], index_shape, generator=gen)
    g = Graph("g")
    xv = g.add_input("x", TensorType.of(x))
    iv = g.add_input("i", TensorType.of(index))
    g.outputs = [loss.gather(g, xv, axis, iv)]
    verify(g)
    assert torch.equal(interpret(g, x, index)[0], torch.gather(x, axis, index))


def test_logsumexp_matches_torch_on_infinite_rows() -> None:
    x = torch.randn(4, 5)
    x[1] = -torch.inf
    x[2, 3] = torch.inf
    g = Graph("g")
    g.outputs = [loss.logsumexp(g, g.add_input("x", TensorType.of(x)), [-1], keepdim=False)]
    torch.testing.assert_close(interpret(g, x)[0], torch.logsumexp(x, -1))
