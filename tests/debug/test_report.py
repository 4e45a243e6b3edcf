"""The `cgc check` report: statistics, text, JSON and JUnit XML, exit codes."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import torch

from cgc.check import CheckReport
from cgc.debug.numerics import Bin, compare, histogram
from cgc.debug.report import render_junit, render_text


def test_comparison_statistics_are_exact() -> None:
    ref = torch.zeros(2, 50, dtype=torch.float64)
    got = ref.clone()
    got[0, :10] = 3e-7  # 10 errors in [1e-7, 1e-6)
    got[0, 10:40] = 2e-5  # 30 in [1e-5, 1e-4)
    got[1, 7] = -0.5  # the largest, out of tolerance
    c = compare("logits", got, ref, rtol=0.0, atol=1e-4)
    assert (c.ok, c.numel, c.mismatches, c.where, c.got_at, c.ref_at) == (
        False, 100, 1, (1, 7), -0.5, 0.0,
    )  # fmt: skip
    assert c.max_abs == 0.5
    assert c.percentiles == {50: 0.0, 90: 2e-5, 99: 2e-5}
    assert c.histogram == (
        Bin(0.0, 0.0, 59),
        Bin(1e-7, 1e-6, 10),
        Bin(1e-6, 1e-5, 0),
        Bin(1e-5, 1e-4, 30),
        Bin(1e-4, 1e-3, 0),
        Bin(1e-3, 1e-2, 0),
        Bin(1e-2, 1e-1, 0),
        Bin(1e-1, 1.0, 1),
    )
    # At most `max_bins` decades: smaller errors join the first bin, which then starts at 0.
    assert histogram(torch.tensor([1e-9, 3e-7, 0.5], dtype=torch.float64), max_bins=2) == (
        Bin(0.0, 1e-1, 2),
        Bin(1e-1, 1.0, 1),
    )
    assert (
        "    == 0               59 |########################################"
        in render_text(CheckReport("m", "d", "ref", 0.0, 1e-4, {"t": [c]})).splitlines()
    )


def test_shape_mismatches_and_non_finite_values_are_reported() -> None:
    c = compare("y", torch.zeros(2, 3), torch.zeros(3, 2), rtol=0, atol=0)
    assert not c.ok and c.problem == "shape [2, 3] differs from the reference's [3, 2]"
    report = CheckReport("m", "d", "eager PyTorch", 1e-4, 1e-4, {"interpreter": [c]})
    doc = json.loads(report.json())
    assert doc["targets"]["interpreter"]["outputs"][0]["max_abs"] == "inf"
    assert "interpreter / y: shape [2, 3] differs" in render_text(report)
    nan = compare("z", torch.tensor([math.nan, 1.0]), torch.tensor([1.0, 1.0]), rtol=0, atol=0)
    assert (nan.ok, nan.max_abs, nan.histogram) == (
        False,
        math.inf,
        (Bin(0, 0, 1), Bin(math.inf, math.inf, 1)),
    )


def test_check_writes_json_and_junit_with_one_testcase_per_output(tmp_path, cgc) -> None:
    result = cgc(
        "check", "tiny-111m", "--seq-len", "8", "--json", tmp_path / "r.json",
        "--junit", tmp_path / "ci" / "report.xml",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("PASS")
    assert "interpreter / output: 0 of 776 values out of tolerance; abs error p50 " in result.stdout
    assert "  abs error histogram:\n    == 0 " in result.stdout

    root = ET.parse(tmp_path / "ci" / "report.xml").getroot()
    assert (root.tag, root.get("tests"), root.get("failures"), root.get("errors")) == (
        "testsuites", "2", "0", "0",
    )  # fmt: skip
    suite = root.find("testsuite")
    assert suite.get("name") == "cgc check tiny-111m" and suite.get("tests") == "2"
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("tiny-111m.interpreter", "output"),
        ("tiny-111m.onnxruntime", "output"),
    ]
    assert all(c.find("failure") is None for c in cases)
    assert cases[0].find("system-out").text.startswith("interpreter / output: 0 of 776 values")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props == {
        "reference": "eager PyTorch",
        "description": "inputs [1, 8], weights random (seed 0)",
        "pipeline": "default",
        "rtol": "0.0001",
        "atol": "0.0001",
    }

    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["ok"] is True and list(doc["targets"]) == ["interpreter", "onnxruntime"]
    out = doc["targets"]["onnxruntime"]["outputs"][0]
    assert (out["name"], out["numel"], out["mismatches"], list(out["percentiles"])) == (
        "output", 776, 0, ["p50", "p90", "p99"],
    )  # fmt: skip
    assert sum(b["count"] for b in out["histogram"]) == 776


def test_mismatches_exit_1_with_failures_and_the_first_diverging_node(tmp_path, cgc) -> None:
    result = cgc(
        "check", "tiny-111m", "--seq-len", "8", "--atol", "0", "--rtol", "0",
        "--junit", tmp_path / "report.xml",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stdout.rstrip().endswith("FAIL: outputs out of tolerance")
    assert "onnxruntime: where the mismatch starts\n  per-node comparison:" in result.stdout
    root = ET.parse(tmp_path / "report.xml").getroot()
    assert (root.get("tests"), root.get("failures")) == ("2", "2")
    for case in root.iter("testcase"):
        failure = case.find("failure")
        assert failure.get("type") == "NumericalMismatch"
        assert failure.get("message").startswith("max abs error ")
        assert "first divergence: %" in failure.text


def test_junit_escapes_text_and_counts_failures() -> None:
    ok = compare("a<b>&", torch.ones(3), torch.ones(3), rtol=0, atol=0)
    bad = compare("c", torch.ones(3), torch.zeros(3), rtol=0, atol=0)
    report = CheckReport('m"1', "d", "ref", 0.0, 0.0, {"t": [ok, bad]}, seconds={"t": 0.5})
    root = ET.fromstring(render_junit(report))
    assert (root.get("tests"), root.get("failures"), root.get("time")) == ("2", "1", "0.500")
    cases = root.find("testsuite").findall("testcase")
    assert [(c.get("classname"), c.get("name"), c.get("time")) for c in cases] == [
        ('m"1.t', "a<b>&", "0.250"),
        ('m"1.t', "c", "0.250"),
    ]
    assert cases[1].find("failure").get("message") == (
        "max abs error 1.000e+00 at [0], 3 of 3 values outside |got - ref| <= 0 + 0·|ref|"
    )


def test_check_input_errors_exit_2(tmp_path, cgc) -> None:
    (tmp_path / "file").write_text("")
    result = cgc("check", "tiny-111m", "--seq-len", "8", "--junit", tmp_path / "file" / "r.xml")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith(
        f"error: {tmp_path / 'file' / 'r.xml'}: cannot write"
    )
    assert cgc("check", "no-such-model").exit_code == 2
