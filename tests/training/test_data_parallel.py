"""Data-parallel steps: which losses split across workers, and shares whose ignored targets
differ in number still give the global batch's loss and update."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cgc.cli import main
from cgc.errors import InputError
from cgc.ir import parse
from cgc.tokenizer import load_tokenizer
from cgc.training.data import Windows, read_text, tokenize
from cgc.training.data_parallel import LossShare

MASKED = Path(__file__).parents[1] / "zoo" / "masked_loss.py"
RUN = ["--steps", "4", "--batch", "4", "--seq-len", "16", "--optimizer", "sgd", "--lr", "0.05",
       "--save-every", "4", "--val-every", "2"]  # fmt: skip


def _joint(body: str, result: str) -> str:
    return f"graph @g(%x: f32[4,3]) {{\n{body}\n  return {result}\n}}"


def test_losses_that_split_across_workers() -> None:
    total = _joint("  %s = reduce_sum(%x) {axes=[0, 1]} : f32[]", "%s")
    assert LossShare.of(parse(total), set()).kind == "sum"
    mean = _joint("  %m = reduce_mean(%x) {axes=[0, 1]} : f32[]", "%m")
    assert LossShare.of(parse(mean), set()).kind == "mean"
    other = _joint("  %m = reduce_max(%x) {axes=[0, 1]} : f32[]\n  %l = mul(%m, %m) : f32[]", "%l")
    with pytest.raises(InputError, match=r"^data-parallel training needs a loss .*; %l is "
                       r"computed by mul$"):  # fmt: skip
        LossShare.of(parse(other), set())


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


def test_shares_with_unequal_ignored_targets_give_the_global_loss(corpus, tmp_path) -> None:
    windows = Windows(tokenize(read_text(corpus), load_tokenizer("bytes")), 16, 0)
    targets = windows.train_batch(0, 4)[:, 1:]
    kept = (targets != ord(" ")).sum(dim=1)
    assert int(kept[:2].sum()) != int(kept[2:].sum())  # the two workers' counts differ
    one, two = tmp_path / "one", tmp_path / "two"
    result = CliRunner().invoke(main, ["train", str(MASKED), "--data", str(corpus), *RUN,
                                       "-o", str(one)])  # fmt: skip
    assert result.exit_code == 0, result.output
    command = [sys.executable, "-m", "cgc", "train", str(MASKED), "--data", str(corpus), *RUN,
               "--systems", "2", "-o", str(two)]  # fmt: skip
    process = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    for a, b in zip(_records(one), _records(two), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=0), (a["step"], key)
    expected = load_file(one / "checkpoint-000004" / "model.safetensors")
    got = load_file(two / "checkpoint-000004" / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
