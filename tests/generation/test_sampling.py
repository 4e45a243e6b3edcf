"""Sampling: greedy is argmax; top-k, top-p and temperature restrict and reshape the draw."""

import pytest
import torch

from cgc.errors import InputError
from cgc.generation import Sampler

LOGITS = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])


def draws(sampler: Sampler, n: int = 400) -> set[int]:
    return {int(sampler(LOGITS)[0]) for _ in range(n)}


def test_greedy_is_argmax() -> None:
    assert Sampler()(torch.tensor([[1.0, 5.0, 5.0], [9.0, 0.0, 1.0]])).tolist() == [1, 0]


def test_top_k_and_top_p_keep_the_most_likely() -> None:
    assert draws(Sampler(temperature=1.0, top_k=2)) == {1, 3}
    # softmax(LOGITS) = [.03, .64, .09, .23, .01]: .64 < .8 <= .64 + .23
    assert draws(Sampler(temperature=1.0, top_p=0.8)) == {1, 3}
    assert draws(Sampler(temperature=1.0, top_p=0.5)) == {1}
    assert draws(Sampler(temperature=5.0)) == {0, 1, 2, 3, 4}


def test_a_seed_reproduces_the_draws() -> None:
    a, b = Sampler(temperature=2.0, seed=7), Sampler(temperature=2.0, seed=7)
    assert [int(a(LOGITS)[0]) for _ in range(20)] == [int(b(LOGITS)[0]) for _ in range(20)]


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_k": 0}, {"top_p": 0.0}])
def test_bad_options(kwargs) -> None:
    with pytest.raises(InputError):
        Sampler(**kwargs)
