"""Learning-rate schedules: the Python factor (a LambdaLR's lambda) and the graph computing it."""

import pytest
import torch

from cgc.errors import InputError
from cgc.ir import Graph, TensorType, interpret
from cgc.training import Schedule


def test_schedule_factors() -> None:
    linear = Schedule("linear", warmup=4, total=14, floor=0.1)
    assert [linear.factor(t) for t in (0, 1, 3)] == [0.25, 0.5, 1.0]
    assert linear.factor(4) == 1.0
    assert linear.factor(9) == pytest.approx(0.55)
    assert linear.factor(14) == pytest.approx(0.1) and linear.factor(100) == pytest.approx(0.1)
    cosine = Schedule("cosine", warmup=0, total=10, floor=0.0)
    assert cosine.factor(5) == pytest.approx(0.5) and cosine.factor(10) == pytest.approx(0.0)
    assert Schedule("constant", warmup=2, total=3).factor(7) == 1.0


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedule_graph_equals_the_python_factor(kind: str) -> None:
    schedule = Schedule(kind, warmup=3, total=11, floor=0.2)
    g = Graph("schedule")
    step = g.add_input("step", TensorType((), "i64"))
    g.outputs = [schedule.build(g, step)]
    for t in range(15):
        (got,) = interpret(g, torch.tensor(t))
        assert got.dtype == torch.float64
        assert float(got) == pytest.approx(schedule.factor(t), rel=1e-15, abs=1e-15), t


def test_bad_schedules_are_clear_errors() -> None:
    with pytest.raises(InputError, match="unknown schedule 'step'"):
        Schedule("step")
    with pytest.raises(InputError, match="floor must be a fraction of the peak"):
        Schedule(floor=2.0)
