"""Dynamic loss scaling: halve and skip on overflow, double after growth_interval good steps."""

import pytest
import torch

from cgc.errors import InputError
from cgc.training.loss_scale import DynamicLossScale, all_finite


def test_the_scale_halves_on_overflow_and_doubles_after_good_steps() -> None:
    scale = DynamicLossScale(scale=8.0, growth_interval=2)
    assert scale.update(False) is False and scale.scale == 4.0
    assert scale.update(True) is True and scale.scale == 4.0 and scale.good_steps == 1
    assert scale.update(True) is True and scale.scale == 8.0 and scale.good_steps == 0
    assert scale.update(True) and not scale.update(False)
    assert scale.state_dict() == {
        "scale": 4.0,
        "growth_interval": 2,
        "factor": 2.0,
        "good_steps": 0,
    }
    other = DynamicLossScale()
    other.load_state_dict({"scale": 4.0, "good_steps": 1})
    assert (other.scale, other.good_steps) == (4.0, 1)


def test_overflow_and_bad_settings() -> None:
    assert all_finite([torch.ones(3), torch.zeros(2)])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])])
    assert not all_finite([torch.tensor(float("nan"))])
    with pytest.raises(InputError, match="loss scaling needs a positive scale"):
        DynamicLossScale(scale=0.0)
