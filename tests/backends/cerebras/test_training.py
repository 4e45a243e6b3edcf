"""Training on a simulated wafer: loss and gradients on the wafer, the fp32 update on the host."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cgc import driver
from cgc.backends.cerebras.training import WaferTrainingSession
from cgc.cli import main
from cgc.training import AdamW, Schedule
from cgc.training.loss_scale import DynamicLossScale
from cgc.training.step import STEP
from cgc.training.trainer import select_loss, training_graphs


def cgc(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(100)))
    return path


def test_fp32_wafer_training_matches_eager_pytorch(tmp_path) -> None:
    report = tmp_path / "r.json"
    result = cgc(
        "check", "tiny-111m", "--train", "--backends", "cerebras", "--steps", "3",
        "--seq-len", "8", "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tensors |got - ref| <= 0 + 0.0001·max|ref|" in result.stdout
    assert result.stdout.rstrip().endswith("PASS")
    wafer = json.loads(report.read_text())["targets"]["cerebras"]
    assert wafer["ok"]
    names = [c["name"] for c in wafer["outputs"]]
    assert names[0] == "loss" and len(names) == 1 + 2 * 28  # every gradient and parameter


def test_cgc_train_on_the_wafer_records_its_cycles_and_resumes_exactly(corpus, tmp_path) -> None:
    run = tmp_path / "run"
    args = ["--data", corpus, "--steps", "2", "--seq-len", "8", "--batch", "1"]
    args += ["--save-every", "1", "--val-every", "2", "--val-batches", "1"]
    result = cgc(
        "train", "tiny-111m", *args, "--backend", "cerebras", "--target", "wse3", "-o", run
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    steps = records[1:]
    assert {"wafer_cycles", "wafer_tokens_per_s"} <= set(steps[0])
    cycles = {r["wafer_cycles"] for r in steps}
    assert len(cycles) == 1 and cycles.pop() > 0  # one program, the same cycles every step
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoint-000002")  # as if killed during step 2
    result = cgc("train", "tiny-111m", "--data", corpus, "--resume", resumed)
    assert result.exit_code == 0, result.output
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    drop = {"tokens_per_s"}  # the wall clock
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
        {k: v for k, v in r.items() if k not in drop} for r in records
    ]


def test_wafer_options_need_the_cerebras_backend(corpus, tmp_path) -> None:
    result = cgc(
        "train", "tiny-111m", "--data", corpus, "--precision", "bf16", "-o", tmp_path / "r"
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --precision applies to --backend cerebras"
    result = cgc("check", "tiny-111m", "--train", "--target", "wse3")
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(
        "--target apply to the cerebras backend; add it to --backends"
    )


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_halves() -> None:
    loaded = driver.load_model("tiny-111m", batch=1, seq_len=8)
    ids = loaded.example_inputs[0]
    graph = driver.trace(loaded.module.train(), (ids,))
    select_loss(graph, own_loss=False)
    graphs = training_graphs(graph, AdamW(), Schedule("constant"), 1.0)
    session = WaferTrainingSession(
        graphs.step, graphs.initial, precision="fp16", loss_scale=DynamicLossScale(2.0**40)
    )
    before = session.state_dict()
    inputs = {"input_ids": ids, STEP: torch.tensor(0)}
    first = session.step(inputs)  # the seed 2^40 is inf in fp16
    assert first["skipped"] == 1.0 and first["loss_scale"] == 2.0**40
    after = session.state_dict()
    assert all(torch.equal(after[x], before[x]) for x in session.pairs)
    assert float(after["loss_scale"]) == 2.0**39
    session.loss_scale.scale = 2.0**10
    second = session.step(inputs)
    assert second["skipped"] == 0.0 and second["loss_scale"] == 2.0**10
    assert not torch.equal(session.state_dict()["transformer.h.0.attn.c_attn.weight"],
                           before["transformer.h.0.attn.c_attn.weight"])  # fmt: skip
    session.load_state_dict(after)  # a checkpoint restores the scale with the weights
    assert session.loss_scale.scale == 2.0**39 and session.loss_scale.good_steps == 0
