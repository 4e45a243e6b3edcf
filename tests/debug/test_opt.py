"""`cgc opt`: passes on textual IR, printed like mlir-opt does."""

from __future__ import annotations

from click.testing import CliRunner

from cgc.cli import main

GELU = """\
graph @g(%x: f32[2,4]) {
  %c = constant() {dtype="f32", shape=[], value=0.7071067811865476} : f32[]
  %s = mul(%x, %c) : f32[2,4]
  %e = erf(%s) : f32[2,4]
  %one = constant() {dtype="f32", shape=[], value=1.0} : f32[]
  %a = add(%e, %one) : f32[2,4]
  %h = constant() {dtype="f32", shape=[], value=0.5} : f32[]
  %xh = mul(%x, %h) : f32[2,4]
  %y = mul(%xh, %a) : f32[2,4]
  return %y
}
"""
FUSED = """\
graph @g(%x: f32[2,4]) {
  %y = gelu(%x) {approximate="none"} : f32[2,4]
  return %y
}
"""


def test_opt_runs_passes_on_text_and_prints_the_result(tmp_path, cgc) -> None:
    (tmp_path / "g.cgc").write_text("// a comment line\n" + GELU)
    result = cgc("opt", tmp_path / "g.cgc", "--passes", "fuse-gelu,canonicalize")
    assert result.exit_code == 0, result.output
    assert result.stdout == FUSED


def test_opt_without_passes_round_trips_and_writes_output_files(tmp_path, cgc) -> None:
    (tmp_path / "g.cgc").write_text(GELU)
    assert cgc("opt", tmp_path / "g.cgc").stdout == GELU
    result = cgc("opt", tmp_path / "g.cgc", "--passes", "fuse-gelu", "-o", tmp_path / "o.cgc")
    assert result.exit_code == 0 and result.stdout == ""
    assert (tmp_path / "o.cgc").read_text() == FUSED


def test_opt_reads_standard_input() -> None:
    result = CliRunner().invoke(main, ["opt", "-", "--passes", "fuse-gelu"], input=GELU)
    assert result.exit_code == 0 and result.stdout == FUSED


def test_opt_errors_are_one_line_with_exit_code_2(tmp_path, cgc) -> None:
    (tmp_path / "g.cgc").write_text(GELU)
    (tmp_path / "bad.cgc").write_text(GELU.replace("erf(%s)", "erf(%t)"))
    (tmp_path / "w.safetensors").write_bytes(b"not safetensors")
    cases = [
        (["opt", tmp_path / "none.cgc"], f"error: {tmp_path / 'none.cgc'}: no such IR file"),
        (["opt", tmp_path / "bad.cgc"], "error: line 4: %t is used before it is defined"),
        (
            ["opt", tmp_path / "g.cgc", "--passes", "fuse-gleu"],
            "error: unknown pass 'fuse-gleu'; valid passes: autodiff, canonicalize",
        ),
        (
            ["opt", tmp_path / "g.cgc", "--weights", tmp_path / "w.safetensors"],
            f"error: {tmp_path / 'w.safetensors'}: not a readable safetensors file",
        ),
    ]
    for args, message in cases:
        result = cgc(*args)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message)
