"""Pass instruments: IR printing, change tracking, timing, statistics, stage dumps, verifying."""

from __future__ import annotations

import io
import re

import pytest

from cgc.debug import DumpStages, PassStatistics, PrintIR, TimePasses
from cgc.errors import InputError
from cgc.ir import Graph, parse
from cgc.passes import (
    DEFAULT_PIPELINE,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    register_pass,
    unregister_pass,
)

DEFAULT = DEFAULT_PIPELINE.split(",")
# The tiny model returns logits (fuse-cross-entropy finds no loss) and has no RMS norm, rotary
# embedding or SwiGLU: every other pass changes it.
UNCHANGED = ("fuse-rms-norm", "fuse-rotary-embedding", "fuse-swiglu", "fuse-cross-entropy")
CHANGING = [(i, name) for i, name in enumerate(DEFAULT, 1) if name not in UNCHANGED]
LAST = f"({len(DEFAULT)}/{len(DEFAULT)}) //----- //\n"
DUMP = re.compile(r"^// -----// IR Dump (Before|After) (\S+)( Failed)? \((\d+)/(\d+)\) //----- //$")
TIME_ROW = re.compile(r"^\s+(\d+\.\d{4}) \(\s*(\d+\.\d)%\)  (.+)$")


def dumps(text: str) -> list[tuple[str, str, int]]:
    """(Before|After[ Failed], pass, position) of every IR dump header in `text`."""
    found = []
    for line in text.splitlines():
        m = DUMP.match(line)
        if m:
            found.append((m.group(1) + (m.group(3) or ""), m.group(2), int(m.group(4))))
    return found


def timing_rows(text: str) -> list[str]:
    """The names in the execution time report, Total last."""
    start = text.index("----Wall Time----  ----Name----")
    return [m.group(3) for line in text[start:].splitlines() if (m := TIME_ROW.match(line))]


def test_changed_is_truthful_on_the_default_pipeline(tiny) -> None:
    """PassResult.changed agrees with the printed IR before and after, for every pass."""
    pm = PassManager("default,default")
    texts: list[str] = []
    seen: list[tuple[str, bool, bool]] = []
    pm.before_pass.append(lambda p, g, ctx: texts.append(str(g)))
    pm.after_pass.append(lambda p, g, r, ctx: seen.append((p.name, r.changed, str(g) != texts[-1])))
    pm.run(tiny.graph())
    changes = [name not in UNCHANGED for name in DEFAULT]
    assert seen == [(name, c, c) for name, c in zip(DEFAULT, changes, strict=True)] + [
        (name, False, False) for name in DEFAULT
    ]


def test_print_ir_after_change_prints_exactly_the_passes_that_changed(tiny, tmp_path, cgc) -> None:
    result = cgc(
        "compile", "tiny-111m", "--seq-len", "8", "--backend", "onnxruntime", "-q",
        "-o", tmp_path / "art", "--print-ir-after-change", "--time-passes", "--print-ir",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert dumps(result.stderr) == [("After", name, i) for i, name in CHANGING]
    assert timing_rows(result.stderr) == [*DEFAULT, "Total"]
    # Each dump is the IR after that pass: the last one is the final graph (--print-ir).
    last = result.stderr.split(LAST)[1].split("===---")[0]
    assert str(parse(last)) == result.stdout


def test_after_change_skips_passes_that_change_nothing(tiny, tmp_path, cgc) -> None:
    ir, weights = tiny.files(tmp_path)
    result = cgc(
        "opt", ir, "--weights", weights, "--passes", "default,default",
        "--print-ir-after-change", "--time-passes", "--pass-statistics",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert dumps(result.stderr) == [("After", name, i) for i, name in CHANGING]
    assert timing_rows(result.stderr) == [*DEFAULT, *DEFAULT, "Total"]
    times = [float(m.group(1)) for m in map(TIME_ROW.match, result.stderr.splitlines()) if m]
    assert times[-1] == pytest.approx(sum(times[:-1]), abs=1e-3)
    stats = result.stderr[result.stderr.index("Pass statistics report") :]
    assert "canonicalize  (changed; nodes 137 -> 126; 11 rewrites)\n  (S) 9 cse\n" in stats
    assert "fuse-attention  (changed; nodes 85 -> 59; 2 rewrites)\n  (S) 2 attention\n" in stats
    assert "fuse-rms-norm  (unchanged; nodes 85 -> 85; 0 rewrites)\n" in stats
    assert (
        "fuse-linear  (changed; nodes 48 -> 31; 9 rewrites)\n  (S) 1 linear\n  (S) 8 linear-bias\n"
    ) in stats
    assert "canonicalize  (changed; nodes 31 -> 31; 0 rewrites)\n  (S) 1 dead-param\n" in stats
    # fuse-swiglu and fuse-cross-entropy of the first run (the others unchanged there run on
    # more nodes), then every pass of the second
    assert stats.count("(unchanged; nodes 31 -> 31; 0 rewrites)") == 2 + len(DEFAULT)


def test_print_ir_before_and_after_named_passes(tiny, tmp_path, cgc) -> None:
    ir, weights = tiny.files(tmp_path)
    result = cgc(
        "opt", ir, "--weights", weights, "--passes", "default",
        "--print-ir-before", "fuse-gelu", "--print-ir-after", "fuse-gelu,canonicalize",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    gelu, last = DEFAULT.index("fuse-gelu") + 1, len(DEFAULT)
    assert dumps(result.stderr) == [
        ("After", "canonicalize", 1),
        ("Before", "fuse-gelu", gelu),
        ("After", "fuse-gelu", gelu),
        ("After", "canonicalize", last),
    ]
    assert result.stdout == result.stderr.split(LAST)[1].rstrip("\n") + "\n"


def test_python_instruments_on_a_pass_manager(tiny) -> None:
    pm = PassManager("fuse-gelu,fuse-gelu")
    out = io.StringIO()
    PrintIR(before_all=True, after_all=True, after_change=True, stream=out).attach(pm)
    timing = TimePasses().attach(pm)
    stats = PassStatistics().attach(pm)
    pm.run(tiny.graph())
    assert dumps(out.getvalue()) == [
        ("Before", "fuse-gelu", 1),
        ("After", "fuse-gelu", 1),
        ("Before", "fuse-gelu", 2),  # the second run finds nothing left: no dump after it
    ]
    assert [name for name, _ in timing.rows] == ["fuse-gelu", "fuse-gelu"]
    assert [(r.name, r.changed, r.stats, r.rewrites) for r in stats.rows] == [
        ("fuse-gelu", True, {"gelu-erf": 2}, 2),
        ("fuse-gelu", False, {}, 0),
    ]


def test_unknown_pass_names_in_print_flags_are_input_errors(tiny, tmp_path, cgc) -> None:
    with pytest.raises(InputError, match="unknown pass 'fuse-gleu'"):
        PrintIR(after=["fuse-gleu"])
    ir, _ = tiny.files(tmp_path)
    result = cgc("opt", ir, "--passes", "canonicalize", "--print-ir-after", "fuse-gleu")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: unknown pass 'fuse-gleu'; valid passes: autodiff, canonicalize"
    )


def test_dump_dir_writes_every_stage_to_numbered_files(tiny, tmp_path) -> None:
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "12-stale.cgc").write_text("from an earlier run")
    (tmp_path / "dump" / "notes.cgc").write_text("not a stage")
    pm = PassManager("default")
    dumper = DumpStages(tmp_path / "dump").attach(pm)
    graph = pm.run(tiny.graph())
    names = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert names == [
        "00-input.cgc",
        "01-canonicalize.cgc",
        "02-fuse-layer-norm.cgc",
        "03-fuse-rms-norm.cgc",
        "04-fuse-rotary-embedding.cgc",
        "05-fuse-attention.cgc",
        "06-fuse-gelu.cgc",
        "07-fuse-linear.cgc",
        "08-fuse-swiglu.cgc",
        "09-fuse-cross-entropy.cgc",
        "10-canonicalize.cgc",
        "notes.cgc",
    ]
    assert (
        dumper.files[0]
        .read_text()
        .startswith(f"// input of the pipeline\n// pipeline: {DEFAULT_PIPELINE}\ngraph @GPT(")
    )
    assert str(parse(dumper.files[0].read_text())) == str(tiny.traced)
    assert str(parse(dumper.files[-1].read_text())) == str(graph)
    assert dumper.files[2].read_text().startswith("// after pass 2/10 fuse-layer-norm (changed)\n")
    assert dumper.files[3].read_text().startswith("// after pass 3/10 fuse-rms-norm (unchanged)\n")


class BreakTypes(Pass):
    """Corrupt the first node's result type (a buggy pass)."""

    name = "break-types"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.nodes[0].outputs[0].type = graph.nodes[0].outputs[0].type.with_dtype("i64")
        return PassResult(True)


@pytest.fixture
def break_types():
    register_pass(BreakTypes)
    yield BreakTypes
    unregister_pass(BreakTypes.name)


def test_verify_each_and_print_after_failure(tiny, tmp_path, break_types, cgc) -> None:
    ir, weights = tiny.files(tmp_path)
    args = ["opt", ir, "--weights", weights, "--passes", "canonicalize,break-types,fuse-gelu"]
    assert cgc(*args).exit_code == 0  # unverified, the broken graph goes through
    repro = tmp_path / "r.cgc"
    result = cgc(
        *args, "--verify-each", "--print-ir-after-failure", "--dump-dir", tmp_path / "d",
        "--reproducer", repro,
    )  # fmt: skip
    assert result.exit_code == 2
    assert dumps(result.stderr) == [("After Failed", "break-types", 2)]
    replay = f"cgc opt {repro} --weights {repro.with_suffix('.safetensors')} --passes break-types"
    assert f"replay with: {replay} --verify-each\n" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "error: after pass break-types: embedding defining %embedding: result types"
    )
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "00-input.cgc",
        "01-canonicalize.cgc",
        "02-break-types.failed.cgc",
    ]


def test_unregistering_removes_a_pass_once(break_types) -> None:
    assert unregister_pass("break-types") is BreakTypes
    with pytest.raises(InputError, match="no pass 'break-types' is registered"):
        unregister_pass("break-types")
    register_pass(BreakTypes)  # for the fixture's clean-up
