"""Run folders and checkpoints: written whole or not at all, listed, pruned and read back."""

import json

import pytest
import torch

from cgc.errors import InputError
from cgc.training.checkpoint import (
    checkpoint_name,
    checkpoints,
    latest_checkpoint,
    load_weights,
    prune_checkpoints,
    read_checkpoint,
    read_run,
    save_weights,
    write_checkpoint,
    write_run,
)


def _write(run, step, fail=False):
    def save_model(folder):
        save_weights({"w": torch.full((2,), float(step))}, folder)
        if fail:
            raise RuntimeError("disk full")

    state = {"step": step, "data_position": 2 * step}
    return write_checkpoint(
        run / checkpoint_name(step), save_model, {"exp_avg.w": torch.ones(2)}, state
    )


def test_checkpoints_are_written_whole_listed_and_pruned(tmp_path) -> None:
    run = tmp_path / "run"
    write_run(run, {"model": "tiny-111m", "options": {"lr": 1e-3}})
    assert read_run(run)["format"] == "cgc-run" and read_run(run)["options"] == {"lr": 1e-3}
    for step in (5, 10, 15):
        _write(run, step)
    with pytest.raises(RuntimeError):
        _write(run, 20, fail=True)
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no half checkpoint
    assert list(checkpoints(run)) == [5, 10, 15]
    assert latest_checkpoint(run).name == "checkpoint-000015"
    saved = read_checkpoint(latest_checkpoint(run))
    assert saved.step == 15 and saved.state["data_position"] == 30
    assert torch.equal(saved.optimizer["exp_avg.w"], torch.ones(2))
    assert torch.equal(load_weights(saved.folder)["w"], torch.full((2,), 15.0))
    prune_checkpoints(run, keep=2)
    assert list(checkpoints(run)) == [10, 15]


def test_what_is_not_a_run_says_so(tmp_path) -> None:
    with pytest.raises(InputError, match="not a training run"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"format": "cgc-run", "version": 99}))
    with pytest.raises(InputError, match="newer than this cgc reads"):
        read_run(tmp_path)
    with pytest.raises(InputError, match="the run has no checkpoint yet"):
        latest_checkpoint(tmp_path)
