"""The `cgc check` report: statistics, text, JSON and JUnit XML, exit codes."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest
import torch

from cgc.check import CheckReport, Tolerance
from cgc.debug.numerics import Bin, compare, histogram
from cgc.debug.report import render_junit, render_text

TABLE = "target         output          max abs    max rel  [at]         status"


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
    report = CheckReport("m", "d", "ref", {"t": Tolerance(0.0, 1e-4)}, {"t": [c]})
    bar = "    == 0               59 |########################################"
    assert bar in render_text(report).splitlines()


def test_shape_mismatches_and_non_finite_values_are_reported() -> None:
    c = compare("y", torch.zeros(2, 3), torch.zeros(3, 2), rtol=0, atol=0)
    assert not c.ok and c.problem == "shape [2, 3] differs from the reference's [3, 2]"
    tolerances = {"interpreter": Tolerance(1e-4, 1e-4)}
    report = CheckReport("m", "d", "eager PyTorch", tolerances, {"interpreter": [c]})
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
    }
    for case in cases:
        tolerance = {p.get("name"): p.get("value") for p in case.find("properties")}
        assert tolerance == {"rtol": "0.0001", "atol": "0.0001"}

    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["ok"] is True and list(doc["targets"]) == ["interpreter", "onnxruntime"]
    assert "rtol" not in doc and "atol" not in doc  # per target: they may differ
    assert [(t["rtol"], t["atol"]) for t in doc["targets"].values()] == [(1e-4, 1e-4)] * 2
    out = doc["targets"]["onnxruntime"]["outputs"][0]
    assert (out["name"], out["numel"], out["mismatches"], list(out["percentiles"])) == (
        "output", 776, 0, ["p50", "p90", "p99"],
    )  # fmt: skip
    assert sum(b["count"] for b in out["histogram"]) == 776


def test_only_a_16_bit_wafer_is_held_to_32_unit_roundoffs(tmp_path, cgc) -> None:
    result = cgc(
        "check", "tiny-111m", "--seq-len", "8", "--backends", "onnxruntime,cerebras",
        "--precision", "bf16", "--target", "fabric:32x32",
        "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:5] == [
        "tiny-111m: inputs [1, 8], weights random (seed 0)",
        "reference: eager PyTorch",
        "tolerance |got - ref| <= 0.0001 + 0.0001·|ref|: interpreter, onnxruntime",
        "tolerance |got - ref| <= 0.125 + 0.125·|ref|: cerebras",  # 32 · 2^-8
        TABLE,
    ]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {t: (r["rtol"], r["atol"]) for t, r in doc["targets"].items()} == {
        "interpreter": (1e-4, 1e-4),
        "onnxruntime": (1e-4, 1e-4),
        "cerebras": (0.125, 0.125),
    }
    cases = ET.parse(tmp_path / "r.xml").getroot().iter("testcase")
    assert {
        c.get("classname"): {p.get("name"): p.get("value") for p in c.find("properties")}
        for c in cases
    } == {
        "tiny-111m.interpreter": {"rtol": "0.0001", "atol": "0.0001"},
        "tiny-111m.onnxruntime": {"rtol": "0.0001", "atol": "0.0001"},
        "tiny-111m.cerebras": {"rtol": "0.125", "atol": "0.125"},
    }


@pytest.mark.parametrize(
    ("given", "lines"),
    [
        (  # rtol 0 everywhere; atol stays per target (the fp16 wafer's: 32 · 2^-11)
            ["--rtol", "0"],
            [
                "tolerance |got - ref| <= 0.0001 + 0·|ref|: interpreter",
                "tolerance |got - ref| <= 0.015625 + 0·|ref|: cerebras",
            ],
        ),
        (
            ["--rtol", "0.5", "--atol", "0.5"],
            ["tolerance |got - ref| <= 0.5 + 0.5·|ref|: interpreter, cerebras"],
        ),
    ],
)
def test_given_rtol_and_atol_apply_to_every_target(cgc, given, lines) -> None:
    result = cgc(
        "check", "tiny-111m", "--seq-len", "8", "--backends", "cerebras", "--precision", "fp16",
        "--target", "fabric:32x32", *given,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()
    assert header[2 : header.index(TABLE)] == lines


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
    tolerances = {"t": Tolerance(0.0, 0.0)}
    report = CheckReport('m"1', "d", "ref", tolerances, {"t": [ok, bad]}, seconds={"t": 0.5})
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
