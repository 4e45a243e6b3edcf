"""pytest helpers for numerics checks in CI: compare backends with eager PyTorch on your model.

    from cgc.testing import assert_backends_close

    def test_my_gpt_matches_eager():
        module, inputs = build_my_gpt()
        assert_backends_close(module, inputs, backends=["onnxruntime"], rtol=1e-4, atol=1e-4)

On a mismatch the assertion message is the `cgc check` report: max abs / max rel error per
target and output, where, percentiles, a histogram, and the first diverging node.

The `cgc_check` fixture does the same and records each target's max errors as properties of
the test in pytest's own JUnit XML (`pytest --junitxml`). Enable it in a conftest.py with

    pytest_plugins = ["cgc.testing"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch

from cgc.check import CheckReport, check_reference, module_reference


def check_backends(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    backends: Sequence[str] = ("onnxruntime",),
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
    pipeline: str = "default",
) -> CheckReport:
    """The `cgc check` report for a module: the IR interpreter and each backend against eager.

    `tolerances` maps a target to its (rtol, atol) where it differs from rtol and atol.
    """
    name = type(module).__name__
    ref = module_reference(module, example_inputs, name, f"from the {name} module")
    return check_reference(
        ref, list(backends), rtol=rtol, atol=atol, tolerances=tolerances, pipeline=pipeline
    )


def assert_backends_close(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    backends: Sequence[str] = ("onnxruntime",),
    *,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
    pipeline: str = "default",
) -> CheckReport:
    """Assert that the interpreter and every backend match eager PyTorch within tolerance
    (`tolerances` as for check_backends).

    Raises AssertionError carrying the full report; returns the report when all match.
    """
    report = check_backends(
        module,
        example_inputs,
        backends,
        rtol=rtol,
        atol=atol,
        tolerances=tolerances,
        pipeline=pipeline,
    )
    if not report.ok:
        raise AssertionError("cgc: backends differ from eager PyTorch\n" + report.text())
    return report


@pytest.fixture
def cgc_check(record_property: Callable[[str, Any], None]) -> Callable[..., CheckReport]:
    """`cgc_check(module, example_inputs, backends=[...], rtol=..., atol=..., tolerances=...,
    pipeline=...)`: assert_backends_close, recording `TARGET.OUTPUT.max_abs` / `.max_rel` test
    properties."""

    def check(
        module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], **options: Any
    ) -> CheckReport:
        report = check_backends(module, example_inputs, **options)
        for target, rows in report.results.items():
            for c in rows:
                record_property(f"{target}.{c.name}.max_abs", f"{c.max_abs:.3e}")
                record_property(f"{target}.{c.name}.max_rel", f"{c.max_rel:.3e}")
        if not report.ok:
            raise AssertionError("cgc: backends differ from eager PyTorch\n" + report.text())
        return report

    return check
