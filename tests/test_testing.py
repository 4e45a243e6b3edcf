"""cgc.testing: assert_backends_close and the cgc_check fixture, as a user's tests use them."""

from __future__ import annotations

import pytest

from cgc import models

# cgc.testing is imported by pytest as a plugin (the documented way to get cgc_check), so the
# tests import from it inside functions: a plugin module imported earlier warns.
pytest_plugins = ["pytester", "cgc.testing"]


@pytest.fixture(scope="module")
def tiny():
    config = models.get_config("tiny-111m")
    return models.build("tiny-111m").eval(), models.example_inputs(config, 1, 8)


def test_assert_backends_close_returns_the_report(tiny) -> None:
    from cgc.testing import assert_backends_close

    module, inputs = tiny
    report = assert_backends_close(module, inputs, backends=["onnxruntime"], rtol=1e-4, atol=1e-4)
    assert report.ok and list(report.results) == ["interpreter", "onnxruntime"]
    assert report.model == "GPT" and report.reference == "eager PyTorch"


def test_per_target_tolerances_pass_through(tiny) -> None:
    from cgc.testing import assert_backends_close

    module, inputs = tiny
    tolerances = {"onnxruntime": (1e-3, 1e-2)}
    report = assert_backends_close(module, inputs, backends=["onnxruntime"], tolerances=tolerances)
    assert report.tolerances == {"interpreter": (1e-4, 1e-4), "onnxruntime": (1e-3, 1e-2)}


def test_a_mismatch_fails_with_the_report_in_the_message(tiny) -> None:
    from cgc.testing import assert_backends_close

    module, inputs = tiny
    with pytest.raises(AssertionError) as info:
        assert_backends_close(module, inputs, backends=[], rtol=0, atol=0)
    message = str(info.value)
    assert message.startswith("cgc: backends differ from eager PyTorch\nGPT: inputs [1, 8]")
    assert "interpreter    output " in message and "MISMATCH" in message
    assert "interpreter: where the mismatch starts" in message
    assert message.endswith("FAIL: outputs out of tolerance")


def test_the_fixture_records_max_errors_as_junit_properties(tiny, cgc_check, request) -> None:
    module, inputs = tiny
    report = cgc_check(module, inputs, backends=["onnxruntime"])
    assert report.ok
    names = [name for name, _ in request.node.user_properties]
    assert names == [
        "interpreter.output.max_abs",
        "interpreter.output.max_rel",
        "onnxruntime.output.max_abs",
        "onnxruntime.output.max_rel",
    ]


def test_the_documented_conftest_line_enables_the_fixture(pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["cgc.testing"]\n')
    pytester.makepyfile(
        """
        from cgc import models

        def test_tiny(cgc_check):
            config = models.get_config("tiny-111m")
            module = models.build("tiny-111m").eval()
            cgc_check(module, models.example_inputs(config, 1, 8), backends=[])

        def test_too_tight(cgc_check):
            config = models.get_config("tiny-111m")
            module = models.build("tiny-111m").eval()
            cgc_check(module, models.example_inputs(config, 1, 8), backends=[], atol=0, rtol=0)
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: cgc: backends differ from eager PyTorch*"])
    junit = (pytester.path / "junit.xml").read_text()
    assert '<property name="interpreter.output.max_abs" value="' in junit
