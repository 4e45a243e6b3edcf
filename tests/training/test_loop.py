"""`cgc train`: the run folder it leaves, exact resumption, and one-line errors."""

import json
import os
import shutil
import stat

import pytest
import torch
from click.testing import CliRunner

from cgc.cli import main
from cgc.training.checkpoint import read_checkpoint

TINY = ["--steps", "6", "--batch", "2", "--seq-len", "16", "--save-every", "3", "--val-every", "3"]


def cgc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.stderr.strip().splitlines()[-1]


def _losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """A finished 6-step run of tiny-111m (checkpoints after steps 3 and 6)."""
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    old = os.umask(0o027)
    try:
        result = cgc("train", "tiny-111m", "--data", corpus, *TINY, "-o", folder)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    note = "trained from scratch with the 256-token vocabulary of the tokenizer (bytes)"
    assert f"{note}, not its own 97" in result.stderr
    assert f"{folder}: 6 steps, loss " in result.stdout
    return folder


def test_the_run_folder(run) -> None:
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-000003", "checkpoint-000006", "loss.png", "metrics.jsonl", "run.json",
    ]  # fmt: skip
    assert stat.S_IMODE(run.stat().st_mode) == 0o750  # the umask, not a temp dir's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (run / "checkpoint-000006").iterdir()} == {
        0o640
    }
    records = _losses(run)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5, 6]
    assert set(records[0]) == {"step", "val_loss"}
    assert set(records[3]) == {"step", "loss", "lr", "grad_norm", "val_loss"}
    assert set(records[4]) == {"step", "loss", "lr", "grad_norm"}
    assert records[6]["val_loss"] < records[0]["val_loss"]
    assert records[1]["lr"] == pytest.approx(6e-4 * 1 / 1)  # warmup round(6·0.169) = 1 step
    state = read_checkpoint(run / "checkpoint-000006")
    assert state.step == 6 and state.state["data_position"] == 12
    assert set(state.optimizer) >= {
        "exp_avg.transformer.wte.weight",
        "exp_avg_sq.transformer.wte.weight",
    }
    config = json.loads((run / "checkpoint-000006" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["vocab_size"] == 256


def test_resume_reproduces_the_uninterrupted_run(run, corpus, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoint-000006")  # as if killed between steps 3 and 6
    result = cgc(
        "train", "tiny-111m", "--data", corpus, "--resume", copy, "--backend", "interpreter"
    )
    assert result.exit_code == 0, result.output
    got, want = _losses(copy), _losses(run)
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4, 5, 6]
    assert got[:4] == want[:4]
    for g, w in zip(got[4:], want[4:], strict=True):  # the interpreter continues ORT's run
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
    result = cgc("train", "tiny-111m", "--data", corpus, "--resume", copy)
    assert _error(result) == f"error: {copy} has finished its 6 steps; nothing to resume"


def test_the_run_folder_is_a_model(run, tmp_path) -> None:
    from transformers import GPT2LMHeadModel

    from cgc import driver

    loaded = driver.load_model(str(run), seq_len=8)
    assert loaded.weights == f"checkpoint {run / 'checkpoint-000006'}"
    hf = GPT2LMHeadModel.from_pretrained(run / "checkpoint-000006").eval()
    ids = loaded.example_inputs[0]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, loaded.module(ids), rtol=1e-5, atol=1e-5)
    result = cgc("compile", run, "--backend", "onnxruntime", "--seq-len", "8", "-o", tmp_path / "a")
    assert result.exit_code == 0, result.output


def test_bad_input_is_one_line(run, corpus, tmp_path) -> None:
    out = tmp_path / "new"
    assert _error(cgc("train", "tiny-111m", "--data", tmp_path / "nope", "-o", out)) == (
        f"error: {tmp_path / 'nope'}: no such file or folder "
        "(give a text file, a folder or 'stdlib')"
    )
    (tmp_path / "short.txt").write_text("too short")
    assert "the text has 9 tokens; training on windows of 17 needs at least 33" in _error(
        cgc("train", "tiny-111m", "--data", tmp_path / "short.txt", *TINY, "-o", out)
    )
    assert _error(cgc("train", "tiny-111m", "--data", corpus, "-o", out)) == (
        "error: --seq-len 128 feeds tiny-111m 129 positions but its context holds 64; "
        "pass --seq-len 63 or less"
    )
    assert _error(cgc("train", "tiny-256m", "--data", corpus, "--resume", run)) == (
        f"error: {run} was trained with tiny-111m, not tiny-256m; resume it with that MODEL"
    )
    assert "--lr 0.001 differs from the run's 0.0006" in _error(
        cgc("train", "tiny-111m", "--data", corpus, "--resume", run, "--lr", "1e-3")
    )
    assert _error(cgc("train", "tiny-111m", "--data", corpus, "-o", run)) == (
        f"error: {run} is a run: --resume it, or choose another -o"
    )
    assert not out.exists()


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path) -> None:
    out = tmp_path / "nan"
    args = ["--steps", "8", "--batch", "2", "--seq-len", "16", "--warmup", "0", "--save-every", "1"]
    result = cgc("train", "tiny-111m", "--data", corpus, *args, "--lr", "1e12", "-o", out)
    line = _error(result)
    assert line.startswith("error: the loss is nan at step ")
    step = int(line.split("at step ")[1].split(";")[0])
    assert line.endswith(f"(the last good checkpoint is {out / f'checkpoint-{step - 1:06d}'})")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [
        f"checkpoint-{s:06d}" for s in range(max(1, step - 2), step)
    ]


def test_the_step_graph_meets_the_debugging_switches(corpus, tmp_path) -> None:
    dump = tmp_path / "dump"
    args = ["--steps", "1", "--batch", "2", "--seq-len", "8", "--print-ir-after", "train-step"]
    result = cgc(
        "train", "tiny-111m", "--data", corpus, *args, "--dump-dir", dump, "-o", tmp_path / "r"
    )
    assert result.exit_code == 0, result.output
    assert "new.exp_avg_sq.transformer.wte.weight" in result.stderr  # the step graph, printed
    stages = sorted(p.name for p in dump.iterdir())
    assert stages[-4:] == [
        "11-autodiff.cgc", "12-train-step.cgc", "inputs.safetensors", "weights.safetensors",
    ]  # fmt: skip
    result = cgc(
        "bisect", dump / "12-train-step.cgc", "--weights", dump / "weights.safetensors",
        "--inputs", dump / "inputs.safetensors", "--passes", "canonicalize",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "outputs stay within tolerance after every pass" in result.stdout


def test_a_tokenizer_json_travels_with_the_run(corpus, tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from cgc import models as cgc_models

    chars = sorted(set(corpus.read_text()))
    vocab = {c: i for i, c in enumerate(["<unk>", *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "run"
    args = [
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "8",
        "--tokenizer",
        tmp_path / "tokenizer.json",
    ]
    result = cgc("train", "tiny-111m", "--data", corpus, *args, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"with the {len(vocab)}-token vocabulary of the tokenizer" in result.stderr
    assert json.loads((out / "run.json").read_text())["tokenizer"] == "tokenizer.json"
    assert (out / "checkpoint-000002" / "tokenizer.json").read_bytes() == (
        tmp_path / "tokenizer.json"
    ).read_bytes()
    # a checkpoint's own model keeps its vocabulary: a larger tokenizer is refused
    small = tmp_path / "small"
    small.mkdir()
    module = cgc_models.build("tiny-111m")
    cgc_models.save_hf_checkpoint(module.config, dict(module.named_parameters()), small)
    assert _error(cgc("train", small, "--data", corpus, *TINY, "-o", tmp_path / "x")) == (
        f"error: the tokenizer (bytes) has 256 tokens but {small} embeds only 97; "
        "use a tokenizer of at most that many"
    )
