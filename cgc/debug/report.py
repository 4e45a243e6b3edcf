"""The `cgc check` report, its data and its renderings as text, JSON and JUnit XML (what CI
dashboards read).

Text: a line per distinct tolerance naming its targets (a 16-bit wafer has a looser one than
the fp32 targets), a table of max abs / max rel error per target and output, then for each the
error percentiles, where the largest error is (both values), a histogram of the absolute error
per decade, and for a target out of tolerance the per-node report naming the first diverging
node.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cgc.debug.numerics import Bin, Comparison
from cgc.errors import InputError
from cgc.files import write_atomic

if TYPE_CHECKING:
    from cgc.debug.node_compare import NodeReport

_BAR = 40


class Tolerance(NamedTuple):
    """An element is within tolerance when |got - ref| <= atol + rtol·|ref|."""

    rtol: float
    atol: float

    def text(self) -> str:
        """The condition, as the reports print it."""
        return f"|got - ref| <= {self.atol:g} + {self.rtol:g}·|ref|"


@dataclass
class CheckReport:
    """Per target and output: errors against the reference, and where a mismatch starts.

    Each target has its own tolerance: a 16-bit wafer is held to a looser one than the fp32
    interpreter in the same run.
    """

    model: str
    description: str
    reference: str
    tolerances: dict[str, Tolerance]  # per target
    results: dict[str, list[Comparison]] = field(default_factory=dict)
    pipeline: str = "default"
    seconds: dict[str, float] = field(default_factory=dict)  # compile + run, per target
    nodes: dict[str, NodeReport] = field(default_factory=dict)  # targets out of tolerance
    detail_ok: bool = True  # the text details outputs within tolerance too (not 300 tensors')

    @property
    def ok(self) -> bool:
        return all(c.ok for rows in self.results.values() for c in rows)

    def text(self) -> str:
        """The table, error percentiles and histograms, per-node reports, then PASS or FAIL."""
        return render_text(self)

    def json(self) -> str:
        """The report as JSON (non-finite numbers as the strings "inf", "-inf", "nan")."""
        return render_json(self)

    def junit(self) -> str:
        """JUnit XML: one testcase per target and output."""
        return render_junit(self)


def _at(index: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, index)) + "]"


def _bin_label(b: Bin) -> str:
    if b.hi == 0:
        return "== 0"
    if math.isinf(b.lo):
        return "inf or nan"
    return f"[{b.lo:.0e}, {b.hi:.0e})"


def histogram_lines(bins: tuple[Bin, ...], indent: str = "    ") -> list[str]:
    """One line per bin: label, count and a bar scaled to the largest count."""
    most = max((b.count for b in bins), default=0)
    width = max((len(str(b.count)) for b in bins), default=1)
    return [
        f"{indent}{_bin_label(b):<18} {b.count:>{width}} |{'#' * round(_BAR * b.count / most)}"
        for b in bins
        if most
    ]


def detail_lines(target: str, c: Comparison) -> list[str]:
    """Percentiles, the worst element and the histogram of one output."""
    if c.problem:
        return [f"{target} / {c.name}: {c.problem}"]
    pct = " ".join(f"p{p} {v:.3e}" for p, v in c.percentiles.items())
    lines = [
        f"{target} / {c.name}: {c.mismatches} of {c.numel} values out of tolerance; "
        f"abs error {pct}",
        f"  max abs error at {_at(c.where)}: got {c.got_at:.9g}, reference {c.ref_at:.9g} "
        f"(allowed {c.allowed:.3e}); max rel error at {_at(c.where_rel)}",
        "  abs error histogram:",
    ]
    return lines + histogram_lines(c.histogram)


def tolerance_lines(report: CheckReport) -> list[str]:
    """`tolerance |got - ref| <= ...: TARGET, ...`, one line per distinct tolerance."""
    targets: dict[Tolerance, list[str]] = {}
    for target, tol in report.tolerances.items():
        targets.setdefault(tol, []).append(target)
    return [f"tolerance {tol.text()}: {', '.join(names)}" for tol, names in targets.items()]


def render_text(report: CheckReport) -> str:
    """The human-readable report (what `cgc check` prints)."""
    lines = [
        f"{report.model}: {report.description}",
        f"reference: {report.reference}",
        *tolerance_lines(report),
        f"{'target':<14} {'output':<12} {'max abs':>10} {'max rel':>10}  [at]         status",
    ]
    for target, rows in report.results.items():
        for c in rows:
            lines.append(f"{target:<14} {c.row():<48} {'ok' if c.ok else 'MISMATCH'}")
    for target, rows in report.results.items():
        for c in rows:
            if report.detail_ok or not c.ok:
                lines += detail_lines(target, c)
    for target, nodes in report.nodes.items():
        lines.append(f"{target}: where the mismatch starts")
        lines += ["  " + line for line in nodes.text().splitlines()]
        if nodes.first_divergence is None and target == "interpreter":
            lines.append(
                "  the optimised graph agrees with the traced one node by node: the difference "
                "is already in the traced graph (frontend) or in the reference"
            )
    lines.append("PASS" if report.ok else "FAIL: outputs out of tolerance")
    return "\n".join(lines)


def _number(x: float) -> float | str:
    """JSON has no inf or nan: spell them as strings."""
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _comparison(c: Comparison) -> dict[str, Any]:
    return {
        "name": c.name,
        "ok": c.ok,
        "numel": c.numel,
        "mismatches": c.mismatches,
        "max_abs": _number(c.max_abs),
        "max_rel": _number(c.max_rel),
        "where": list(c.where),
        "got_at": _number(c.got_at),
        "ref_at": _number(c.ref_at),
        "allowed": _number(c.allowed),
        "where_rel": list(c.where_rel),
        "percentiles": {f"p{p}": _number(v) for p, v in c.percentiles.items()},
        "histogram": [
            {"lo": _number(b.lo), "hi": _number(b.hi), "count": b.count} for b in c.histogram
        ],
        "problem": c.problem,
    }


def render_json(report: CheckReport) -> str:
    """The report as a JSON document."""
    targets = {}
    for target, rows in report.results.items():
        nodes = report.nodes.get(target)
        first = nodes.first_divergence if nodes is not None else None
        tol = report.tolerances[target]
        targets[target] = {
            "ok": all(c.ok for c in rows),
            "rtol": _number(tol.rtol),
            "atol": _number(tol.atol),
            "seconds": report.seconds.get(target),
            "outputs": [_comparison(c) for c in rows],
            "first_divergence": None
            if first is None
            else {
                "value": first.name,
                "op": first.op,
                "scope": first.scope,
                "source": first.source,
                "paired_with": first.reference,
                "paired_by": first.matched_by,
                "max_abs": _number(first.comparison.max_abs),
                "max_rel": _number(first.comparison.max_rel),
            },
        }
    doc = {
        "model": report.model,
        "description": report.description,
        "reference": report.reference,
        "pipeline": report.pipeline,
        "ok": report.ok,
        "targets": targets,
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def render_junit(report: CheckReport) -> str:
    """JUnit XML: a testsuite per model, a testcase per target × output (classname
    `MODEL.TARGET`, name the output, its target's rtol and atol as properties), a <failure>
    with the details when out of tolerance."""
    cases = [(t, c) for t, rows in report.results.items() for c in rows]
    failures = sum(not c.ok for _, c in cases)
    total_time = sum(report.seconds.values())
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0"}
    root = ET.Element("testsuites", name="cgc check", time=f"{total_time:.3f}", **counts)
    suite = ET.SubElement(
        root,
        "testsuite",
        name=f"cgc check {report.model}",
        time=f"{total_time:.3f}",
        skipped="0",
        **counts,
    )
    props = ET.SubElement(suite, "properties")
    for key, value in [
        ("reference", report.reference),
        ("description", report.description),
        ("pipeline", report.pipeline),
    ]:
        ET.SubElement(props, "property", name=key, value=value)
    for target, c in cases:
        share = report.seconds.get(target, 0.0) / max(1, len(report.results[target]))
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{report.model}.{target}",
            name=c.name,
            time=f"{share:.3f}",
        )
        tol = report.tolerances[target]
        case_props = ET.SubElement(case, "properties")
        for key, value in [("rtol", tol.rtol), ("atol", tol.atol)]:
            ET.SubElement(case_props, "property", name=key, value=f"{value:g}")
        details = "\n".join(detail_lines(target, c))
        if not c.ok:
            message = c.problem or (
                f"max abs error {c.max_abs:.3e} at {_at(c.where)}, {c.mismatches} of {c.numel} "
                f"values outside {tol.text()}"
            )
            failure = ET.SubElement(case, "failure", message=message, type="NumericalMismatch")
            nodes = report.nodes.get(target)
            failure.text = details + ("\n" + nodes.text() if nodes is not None else "")
        ET.SubElement(case, "system-out").text = details
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def save_report(path: str | Path, text: str) -> Path:
    """Write a report file atomically; a folder that cannot be written is the user's error."""
    try:
        return write_atomic(path, text.encode())
    except OSError as e:
        raise InputError(f"{path}: cannot write the report ({e.strerror})") from None
