"""`cgc check MODEL --train`: eager PyTorch, the interpreter and ONNX Runtime train alike."""

import json

from click.testing import CliRunner

from cgc.cli import main


def test_check_train_passes_and_reports(tmp_path) -> None:
    report = tmp_path / "r.json"
    args = ["check", "tiny-111m", "--train", "--steps", "2", "--seq-len", "16", "--json", report]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "tiny-111m: 2 adamw steps on batches [1, 16]" in text
    assert (
        "tolerance loss |got - ref| <= 0 + 0.0001·|ref|, tensors |got - ref| <= 0 + 0.0001·max|ref|"
        in text
    )
    assert text.rstrip().endswith("PASS")
    doc = json.loads(report.read_text())
    rows = {c["name"] for c in doc["targets"]["onnxruntime"]["outputs"]}
    assert {"loss", "grad.transformer.wte.weight", "transformer.wte.weight"} <= rows
    assert len(rows) == 1 + 2 * 28  # the loss, then a gradient and a parameter per tensor
    assert doc["targets"]["interpreter"]["ok"] and doc["targets"]["onnxruntime"]["ok"]


def test_check_train_fails_out_of_tolerance_and_refuses_what_cannot_train() -> None:
    result = CliRunner().invoke(
        main, ["check", "tiny-111m", "--train", "--steps", "1", "--seq-len", "8", "--rtol", "1e-12"]
    )
    assert result.exit_code == 1
    assert result.stdout.rstrip().endswith("FAIL: outputs out of tolerance")
    result = CliRunner().invoke(main, ["check", "tiny-111m", "--train", "--backends", "nope"])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "error: backend 'nope' does not train; --train checks onnxruntime, cerebras"
    )


def test_check_train_against_an_fp64_reference(tmp_path) -> None:
    args = ["check", "tiny-111m", "--train", "--steps", "3", "--seq-len", "16", "--reference",
            "fp64", "--backends", "onnxruntime"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "reference: eager PyTorch in fp64 (torch.optim, clip_grad_norm_, LambdaLR)" in (
        result.stdout
    )
    assert result.stdout.rstrip().endswith("PASS")
    result = CliRunner().invoke(main, [*args[:-4], "--reference", "fp16"])
    assert result.exit_code == 2 and "'fp16' is not one of 'fp32', 'fp64'" in result.stderr
