"""The artifact folder through the CLI: files, determinism, `cgc run`, and refusing bad ones."""

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cgc import driver
from cgc.cli import main

FILES = [
    "graph.cgc",
    "manifest.json",
    "program.json",
    "program.txt",
    "report.json",
    "wafer.png",
    "weights.safetensors",
]


def cgc(*args: str):
    return CliRunner().invoke(main, list(args))


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("art") / "tiny"
    result = cgc(
        "compile", "tiny-111m", "--seq-len", "16", "--target", "fabric:32x32", "-o", str(folder)
    )
    assert result.exit_code == 0, result.output
    return folder


def test_compile_writes_the_wafer_files_and_prints_the_plan(artifact) -> None:
    assert sorted(p.name for p in artifact.iterdir()) == FILES
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["backend"] == "cerebras"
    assert manifest["info"]["target"] == "fabric:32x32"
    assert (manifest["info"]["mode"], manifest["info"]["precision"]) == ("pipelined", "fp32")
    assert (artifact / "wafer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((artifact / "report.json").read_text())
    assert (report["mode"], len(report["regions"]), report["pes_assigned"]) == ("pipelined", 9, 1.0)


def test_program_json_is_byte_identical_across_compiles(artifact, tmp_path) -> None:
    again = tmp_path / "again"
    result = cgc(
        "compile",
        "tiny-111m",
        "--seq-len",
        "16",
        "--target",
        "fabric:32x32",
        "-o",
        str(again),
        "-q",
    )
    assert result.exit_code == 0
    for name in ("program.json", "program.txt", "report.json", "weights.safetensors"):
        assert (again / name).read_bytes() == (artifact / name).read_bytes(), name


def test_run_simulates_and_prints_the_report(artifact) -> None:
    result = cgc("run", str(artifact))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("output: f32[1,16,97]  mean ")
    assert lines[2] == (
        "wafer: fabric:32x32, pipelined, fp32; 9 regions, 100.0% of usable PEs assigned"
    )
    assert lines[3].startswith("period 6,561 cycles (bottleneck region 6, 6,561 cycles;")
    assert lines[6] == "region layer       PEs      cycles SRAM B/PE  ops"
    assert len(lines) == 7 + 9


def test_loaded_artifact_matches_the_in_memory_one(artifact) -> None:
    loaded = driver.load(artifact)
    model = driver.load_model("tiny-111m", seq_len=16)
    compiled = driver.compile(model.module, model.example_inputs, "cerebras", target="fabric:32x32")
    inputs = model.example_inputs
    assert loaded.run(*inputs)[0].equal(compiled.run(*inputs)[0])


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_edited_program_is_refused(artifact, tmp_path) -> None:
    folder = _copy(artifact, tmp_path / "edited")
    text = (folder / "program.json").read_text()
    (folder / "program.json").write_text(text.replace('"cycles": 6561', '"cycles": 1', 1))
    assert error_line(cgc("run", str(folder))) == (
        f"error: {folder}: program.json was modified after compilation; recompile"
    )


def test_incomplete_artifact_is_refused(artifact, tmp_path) -> None:
    folder = _copy(artifact, tmp_path / "incomplete")
    (folder / "weights.safetensors").unlink()
    assert error_line(cgc("run", str(folder))) == (
        f"error: {folder}: artifact is incomplete, weights.safetensors is missing; recompile"
    )


def test_program_from_a_newer_schema_is_refused(artifact, tmp_path) -> None:
    folder = _copy(artifact, tmp_path / "newer")
    program = folder / "program.json"
    program.write_text(
        program.read_text().replace("cgc.cerebras.program/1", "cgc.cerebras.program/2")
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["program.json"] = hashlib.sha256(program.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert error_line(cgc("run", str(folder))) == (
        f"error: {program}: program schema version 2 is newer than this cgc reads (1); "
        "upgrade cgc or recompile"
    )


def test_wafer_options_and_their_misuse(tmp_path) -> None:
    out = tmp_path / "bf16"
    result = cgc(
        "compile", "tiny-111m", "--seq-len", "8", "--target", "fabric:16x16",
        "--mode", "streaming", "--precision", "bf16", "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wafer: fabric:16x16, streaming, bf16;" in result.stdout
    run = cgc("run", str(out))
    assert run.exit_code == 0 and "streaming, bf16" in run.stdout
    onnx = cgc("compile", "tiny-111m", "--backend", "onnxruntime", "--precision", "bf16")
    assert (
        error_line(onnx) == "error: --precision only apply to --backend cerebras, not onnxruntime"
    )
    bad = cgc(
        "compile",
        "tiny-111m",
        "--seq-len",
        "8",
        "--target",
        "fabric:1x1",
        "-o",
        str(tmp_path / "x"),
    )
    assert error_line(bad).startswith(
        "error: the model fits fabric:1x1 in neither mode: pipelined:"
    )
    assert not (tmp_path / "x").exists()


def test_meta_weights_compile_but_do_not_run(tmp_path) -> None:
    model = driver.load_model("tiny-111m", seq_len=8)
    graph = driver.run_passes(driver.trace(model.module, model.example_inputs), "default")
    graph.weights = {}
    folder = driver.compile_graph(graph, "cerebras", {}, target="fabric:16x16").save(tmp_path / "m")
    assert not (folder / "weights.safetensors").exists()
    assert error_line(cgc("run", str(folder))).startswith(
        "error: this program has no weights (meta weights: 29 of 29 parameters have no data)"
    )
