"""The `cgc` command line: results, exit codes and one-line errors for bad input."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from cgc.cli import main

TINY_MODEL = """\
import torch


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x))


def get_model():
    torch.manual_seed(0)
    return Tiny(), (torch.randn(2, 8),)
"""


def cgc(*args: str):
    return CliRunner().invoke(main, list(args))


def one_error_line(result, code: int = 2) -> str:
    """The error line; progress lines may precede it on stderr, nothing may follow."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def test_models_lists_every_size() -> None:
    result = cgc("models")
    assert result.exit_code == 0
    assert "cerebras-gpt-111m" in result.output
    assert "cerebras-gpt-13b-mup" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("cerebras-gpt-13b "))
    assert row.split() == ["cerebras-gpt-13b", "40", "5120", "40", "12,853,386,240"]


def test_help_explains_model_forms() -> None:
    result = cgc("compile", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "a Hugging Face GPT-2 checkpoint folder (config.json + model.safetensors)" in text
    assert "model.py:NAME calls NAME() instead" in text


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({}, ["compile", "missing.py"], "error: missing.py: no such file"),
        ({}, ["compile", "no/such/dir"], "error: no/such/dir: no such file or folder"),
        ({}, ["compile", "gpt-17"], "error: unknown model 'gpt-17'; run `cgc models`"),
        (
            {"bad.py": "def get_model(:\n"},
            ["compile", "bad.py"],
            "error: bad.py:1: syntax error: ",
        ),
        ({"empty.py": ""}, ["compile", "empty.py"], "error: empty.py: define get_model()"),
        (
            {"m.py": TINY_MODEL},
            ["compile", "m.py:nothere"],
            "error: m.py: no function nothere() to call",
        ),
        (
            {"m.py": "raise RuntimeError('boom')\n"},
            ["compile", "m.py"],
            "error: m.py: importing it failed: RuntimeError: boom (line 1)",
        ),
        (
            {"m.py": TINY_MODEL},
            ["compile", "m.py", "--backend", "tpu"],
            "error: unknown backend 'tpu'; choose from cerebras, onnxruntime",
        ),
        (
            {"ckpt/config.json": "{not json"},
            ["compile", "ckpt"],
            "error: ckpt/config.json: not valid JSON (",
        ),
        ({}, ["run", "nowhere"], "error: nowhere: no such artifact folder"),
        ({"art/x.txt": "hi"}, ["run", "art"], "error: art: not a cgc artifact (no manifest.json)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch, files: dict[str, str], args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(text)
    result = cgc(*args)
    assert not Path("out").exists()
    assert one_error_line(result).startswith(message)


def test_bad_option_value_is_a_usage_error() -> None:
    result = cgc("compile", "tiny-111m", "--batch", "0")
    assert result.exit_code == 2
    assert "Invalid value for '--batch': must be at least 1, got 0" in result.output
    assert "Traceback" not in result.output


def test_batch_option_rejected_for_python_files(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(TINY_MODEL)
    result = cgc("compile", str(tmp_path / "m.py"), "--batch", "2")
    assert one_error_line(result).startswith("error: --batch and --seq-len apply to built-in")


def test_inputs_file_is_checked(tmp_path: Path) -> None:
    out = tmp_path / "art"
    assert cgc("compile", "tiny-111m", "--seq-len", "8", "-o", str(out), "-q").exit_code == 0
    import torch

    save_file({"input_ids": torch.zeros(1, 9, dtype=torch.int64)}, str(tmp_path / "in.st"))
    result = cgc("run", str(out), "--inputs", str(tmp_path / "in.st"))
    assert one_error_line(result) == (
        f"error: {tmp_path / 'in.st'}: input_ids is torch.int64 [1, 9], expected i64[1,8]"
    )


UNSUPPORTED = """\
import torch


class UsesCumprod(torch.nn.Module):
    def forward(self, x):
        return torch.cumprod(x, dim=0) * 2


model = UsesCumprod()
example_inputs = (torch.randn(4),)
"""


def test_unsupported_op_names_aten_op_and_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.py").write_text(UNSUPPORTED)
    result = cgc("compile", "m.py", "-o", "art")
    assert [p.name for p in tmp_path.iterdir()] == ["m.py"]
    assert one_error_line(result).startswith("error: unsupported operation aten.cumprod at m.py:6")


def test_compile_run_check_on_a_python_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("m.py").write_text(TINY_MODEL)
    result = cgc("compile", "m.py", "-o", "art")
    assert result.exit_code == 0, result.output
    assert "m: 36 parameters, weights from m.py" in result.stdout
    assert "ops: gelu 1, linear 1" in result.stdout
    assert "artifact: art (cerebras;" in result.stdout  # the default backend: a wafer plan
    assert "wafer: wse2, pipelined, fp32; 1 region," in result.stdout
    run = cgc("run", "art")
    assert run.exit_code == 0, run.output
    assert run.stdout.startswith("output: f32[2,4]  mean ")
    assert (tmp_path / "art" / "program.json").is_file()
    check = cgc("check", "m.py", "--backends", "onnxruntime,cerebras")
    assert check.exit_code == 0, check.output
    assert "onnxruntime    output" in check.stdout and "cerebras       output" in check.stdout
    assert check.stdout.rstrip().splitlines()[-1] == "PASS"


def test_check_exits_1_out_of_tolerance() -> None:
    result = cgc("check", "tiny-111m", "--seq-len", "8", "--atol", "0", "--rtol", "0", "-q")
    assert result.exit_code == 1
    assert result.output == ""


def test_quiet_compile_prints_nothing(tmp_path: Path) -> None:
    result = cgc("compile", "tiny-111m", "--seq-len", "4", "-o", str(tmp_path / "a"), "-q")
    assert result.exit_code == 0 and result.output == ""
    assert (tmp_path / "a" / "manifest.json").is_file()


def test_passes_lists_every_pass_with_description_and_options() -> None:
    from cgc.passes import DEFAULT_PIPELINE, all_passes, parse_pipeline

    result = cgc("passes")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    names = [line.split()[0] for line in lines if line and not line[0].isspace()]
    assert names[:-1] == list(all_passes()) and lines[-1] == f"default pipeline: {DEFAULT_PIPELINE}"
    for name, cls in all_passes().items():
        (row,) = [i for i, line in enumerate(lines) if line.startswith(f"{name} ")]
        assert lines[row].split(None, 1)[1] == cls.description()
        options = [line.split()[0] for line in lines[row + 1 : row + 1 + len(cls.options())]]
        # each option line is pipeline syntax with the default: it parses back to the pass
        assert [repr(p) for p in parse_pipeline(f"{name}{{{','.join(options)}}}")] == [name]
    assert "large-negative=-10000.0 (float)" in [line.strip() for line in lines]


def test_check_onnx_file_against_ort_on_the_original(tmp_path: Path) -> None:
    import torch

    from cgc import models

    module = models.build("tiny-111m")
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(module, models.example_inputs(module.config, 1, 8), str(path), dynamo=True)
    result = cgc("check", str(path), "--backends", "onnxruntime,cerebras", "--target", "wse2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1:3] == [
        "reference: ONNX Runtime on the original file",
        # every target computes in fp32 (the wafer too, at its default precision)
        "tolerance |got - ref| <= 0.0001 + 0.0001·|ref|: interpreter, onnxruntime, cerebras",
    ]
    assert [line.split()[0] for line in lines[4:7]] == ["interpreter", "onnxruntime", "cerebras"]
    assert all(line.split()[-1] == "ok" for line in lines[4:7])
    assert lines[-1] == "PASS"


LOSS_MODEL = """\
import torch
from zoo import nanogpt


def get_model():
    model, (ids,) = nanogpt.get_model()
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -1
    return model, (ids, targets)
"""


def test_check_and_compile_a_model_that_returns_its_loss(tmp_path: Path) -> None:
    """get_model() returns a model called with (ids, targets) that returns (logits, loss)."""
    model = tmp_path / "model.py"
    model.write_text(LOSS_MODEL)
    result = cgc("check", str(model), "--backends", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert "onnxruntime / loss: 0 of 1 values out of tolerance" in result.output
    result = cgc("compile", str(model), "--backend", "onnxruntime", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "cross_entropy 1" in result.output
    result = cgc("compile", str(model), "-o", str(tmp_path / "wafer"), "--target", "fabric:32x32")
    assert result.exit_code == 0, result.output
    program = json.loads((tmp_path / "wafer" / "program.json").read_text())
    kernels = [k["tiling"]["kernel"] for r in program["regions"] for k in r["kernels"]]
    assert kernels.count("cross_entropy") == 1
