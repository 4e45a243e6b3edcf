"""dropout: Philox4x32-10 known answers, the keep rate, independent streams and seeds, the scale,
and a VJP that recomputes the same mask."""

import pytest
import torch

from cgc.errors import IRError
from cgc.ir import Graph, TensorType, get_op, interpret
from cgc.ir.ops.random import add_dropout, keep_mask, philox, rng_seed

# Random123's kat_vectors for philox4x32-10: counter, key, expected output (hex words).
KNOWN_ANSWERS = [
    ("0 0 0 0", "0 0", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    (
        "ffffffff ffffffff ffffffff ffffffff",
        "ffffffff ffffffff",
        "408f276d 41c83b0e a20bc7c6 6d5451fd",
    ),
    (
        "243f6a88 85a308d3 13198a2e 03707344",
        "a4093822 299f31d0",
        "d16cfe09 94fdcceb 5001e420 24126ea1",
    ),
]


def _words(text: str) -> list[int]:
    return [int(w, 16) for w in text.split()]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers_in_python_ints_and_int64_tensors(counter, key, expected) -> None:
    assert philox(_words(counter), _words(key)) == _words(expected)
    lanes = philox(
        [torch.tensor(w) for w in _words(counter)], [torch.tensor(w) for w in _words(key)]
    )
    assert [int(v) for v in lanes] == _words(expected)


def _dropout_graph(shape: tuple[int, ...], p: float, stream: int = 0) -> Graph:
    g = Graph("g")
    x = g.add_input("x", TensorType(shape, "f32"))
    g.outputs = [g.call("dropout", x, rng_seed(g), p=p, stream=stream)]
    return g


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p(p: float) -> None:
    n = 1 << 18
    kept = keep_mask(torch.tensor(1234), 3, (n,), p).double().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sigma


def test_masks_differ_across_streams_and_seeds_and_repeat_for_the_same_pair() -> None:
    shape = (64, 64)
    base = keep_mask(torch.tensor(7), 0, shape, 0.5)
    assert torch.equal(base, keep_mask(torch.tensor(7), 0, shape, 0.5))
    for other in (
        keep_mask(torch.tensor(7), 1, shape, 0.5),
        keep_mask(torch.tensor(8), 0, shape, 0.5),
    ):
        agree = (other == base).double().mean().item()
        assert 0.45 < agree < 0.55  # independent halves agree about half the time


def test_dropout_scales_kept_elements_and_zeroes_the_rest() -> None:
    x = torch.randn(8, 33)
    seed = torch.tensor(-3)  # negative seeds are two's complement bits
    (y,) = interpret(_dropout_graph(x.shape, 0.25, stream=2), x, seed)
    keep = keep_mask(seed, 2, x.shape, 0.25)
    assert torch.equal(y, torch.where(keep, x * torch.tensor(1 / 0.75), torch.zeros(())))
    assert torch.equal(interpret(_dropout_graph(x.shape, 0.0), x, seed)[0], x)
    assert torch.equal(interpret(_dropout_graph(x.shape, 1.0), x, seed)[0], torch.zeros_like(x))


def test_vjp_recomputes_the_mask() -> None:
    g = _dropout_graph((4, 9), 0.3, stream=5)
    (node,) = g.nodes
    dy = g.add_input("dy", TensorType((4, 9), "f32"))
    with g.inserting_before(None):
        dx, dseed = get_op("dropout").vjp(g, node, [dy])
    g.outputs.append(dx)
    assert dseed is None and dx.producer.attrs == {"p": 0.3, "stream": 5}
    x, grad, seed = torch.randn(4, 9), torch.randn(4, 9), torch.tensor(11)
    y, got = interpret(g, x, seed, grad)
    torch.testing.assert_close(got, torch.where(y != 0, grad / 0.7, torch.zeros(())))


def test_add_dropout_gives_each_node_its_own_stream_and_one_seed() -> None:
    g = Graph("g")
    x = g.add_input("x", TensorType((2, 3), "f32"))
    a = add_dropout(g, x, 0.1)
    b = add_dropout(g, a, 0.2)
    assert [n.attrs["stream"] for n in g.nodes] == [0, 1]
    assert [v.name for v in g.inputs] == ["x", "rng_seed"]
    assert a.producer.inputs[1] is b.producer.inputs[1] is g.inputs[1]


@pytest.mark.parametrize(
    "x, seed, attrs, message",
    [
        ("i64", TensorType((), "i64"), {"p": 0.1, "stream": 0}, "floating-point operand"),
        ("f32", TensorType((1,), "i64"), {"p": 0.1, "stream": 0}, "seed must be an i64"),
        ("f32", TensorType((), "i64"), {"p": 1.5, "stream": 0}, "p must be a probability"),
        ("f32", TensorType((), "i64"), {"p": 0.1, "stream": -1}, "stream must be an integer"),
    ],
)
def test_dropout_checks_its_operands(x, seed, attrs, message) -> None:
    with pytest.raises(IRError, match=message):
        get_op("dropout").infer([TensorType((2, 2), x), seed], attrs)
