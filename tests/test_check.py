"""cgc.check from Python: per-target tolerances."""

from __future__ import annotations

import pytest
import torch

from cgc import models
from cgc.check import Reference, Tolerance, check_reference, module_reference
from cgc.errors import InputError, ModelError


@pytest.fixture(scope="module")
def ref() -> Reference:
    config = models.get_config("tiny-111m")
    module = models.build("tiny-111m").eval()
    return module_reference(module, models.example_inputs(config, 1, 8), "tiny", "random")


def test_listed_targets_get_their_tolerance_and_the_others_rtol_and_atol(ref: Reference) -> None:
    report = check_reference(
        ref, ["onnxruntime"], rtol=1e-3, atol=1e-3, tolerances={"interpreter": (0.0, 0.0)}
    )
    assert report.tolerances == {
        "interpreter": Tolerance(rtol=0.0, atol=0.0),
        "onnxruntime": Tolerance(rtol=1e-3, atol=1e-3),
    }
    assert [all(c.ok for c in rows) for rows in report.results.values()] == [False, True]
    assert report.nodes["interpreter"].atol == 0.0  # the per-node comparison uses it too
    assert "tolerance |got - ref| <= 0 + 0·|ref|: interpreter\n" in report.text()


def test_tolerances_for_a_target_not_checked_are_an_input_error(ref: Reference) -> None:
    with pytest.raises(InputError, match="^tolerances given for cerebras, which are not checked$"):
        check_reference(ref, ["onnxruntime"], tolerances={"cerebras": (0.1, 0.1)})


def test_a_model_that_fails_in_eager_is_a_model_error() -> None:
    class Broken(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return ids + torch.ones(3)

    message = "^the model fails in eager PyTorch: RuntimeError: The size of tensor a"
    with pytest.raises(ModelError, match=message):
        module_reference(Broken(), (torch.zeros(2, dtype=torch.long),), "broken", "none")
