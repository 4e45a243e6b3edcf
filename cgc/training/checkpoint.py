"""Run folders and checkpoints: what a training run leaves on disk, each written atomically.

    RUN/
      run.json                what was trained and how: model, data, tokenizer, options
      metrics.jsonl, loss.png (cgc.training.metrics)
      tokenizer.json          when the run used one
      checkpoint-000150/      staged in a temporary sibling, renamed into place when complete
        config.json, model.safetensors   a Hugging Face GPT-2 checkpoint for GPT models, which
                                         `transformers` loads; the trained parameters by name
                                         (model.safetensors alone) for other models
        tokenizer.json        when the run used one, as Hugging Face checkpoints carry it
        optimizer.safetensors the optimizer state (exp_avg.<param>, ...)
        trainer_state.json    step, seed, data position and digest, the last loss

A run folder is itself a MODEL for `cgc compile`/`cgc check`: its latest checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cgc.errors import InputError
from cgc.files import staged_folder, write_atomic
from cgc.tokenizer import TOKENIZER_FILE

RUN_FILE = "run.json"
RUN_FORMAT = "cgc-run"
RUN_VERSION = 1
MODEL_WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step` steps."""
    return f"checkpoint-{step:06d}"


def is_run(folder: str | Path) -> bool:
    """Whether `folder` is a training run folder (it has run.json)."""
    return (Path(folder) / RUN_FILE).is_file()


def read_run(folder: str | Path) -> dict[str, Any]:
    """A run folder's run.json."""
    path = Path(folder) / RUN_FILE
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not a training run (no {RUN_FILE})") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise InputError(f"{path}: not a cgc run description")
    if run.get("version", 0) > RUN_VERSION:
        raise InputError(f"{folder}: run format {run['version']} is newer than this cgc reads")
    return run


def write_run(folder: Path, run: Mapping[str, Any]) -> None:
    """Write run.json (format and version added)."""
    doc = {"format": RUN_FORMAT, "version": RUN_VERSION, **run}
    write_atomic(folder / RUN_FILE, (json.dumps(doc, indent=2) + "\n").encode())


def checkpoints(folder: str | Path) -> dict[int, Path]:
    """The complete checkpoints of a run by step (staging folders are hidden, never listed)."""
    found = {}
    for child in Path(folder).iterdir():
        m = _CHECKPOINT.match(child.name)
        if m and child.is_dir() and (child / TRAINER_STATE).is_file():
            found[int(m.group(1))] = child
    return dict(sorted(found.items()))


def latest_checkpoint(folder: str | Path) -> Path:
    """The checkpoint of a run with the most steps."""
    found = checkpoints(folder)
    if not found:
        raise InputError(f"{folder}: the run has no checkpoint yet")
    return found[max(found)]


@dataclass
class Checkpoint:
    """One checkpoint read back."""

    folder: Path
    state: dict[str, Any]  # trainer_state.json
    optimizer: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def write_checkpoint(
    target: Path,
    save_model: Callable[[Path], None],
    optimizer: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    tokenizer: Path | None = None,
) -> Path:
    """Write a checkpoint folder atomically: `save_model(folder)` writes the weights, then the
    optimizer state, the trainer state (with at least `step`) and a copy of `tokenizer`."""
    with staged_folder(target) as folder:
        save_model(folder)
        save_file({k: v.contiguous() for k, v in optimizer.items()}, str(folder / OPTIMIZER))
        if tokenizer is not None:
            shutil.copyfile(tokenizer, folder / TOKENIZER_FILE)
        (folder / TRAINER_STATE).write_text(json.dumps(dict(state), indent=2) + "\n")
    return target


def prune_checkpoints(run: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints of a run."""
    found = checkpoints(run)
    for step in list(found)[:-keep]:
        shutil.rmtree(found[step])


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """A checkpoint's trainer state and optimizer state (the weights load as a model)."""
    folder = Path(folder)
    try:
        state = json.loads((folder / TRAINER_STATE).read_text())
        optimizer = load_file(folder / OPTIMIZER) if (folder / OPTIMIZER).is_file() else {}
    except FileNotFoundError:
        raise InputError(f"{folder}: not a checkpoint (no {TRAINER_STATE})") from None
    except (OSError, ValueError, SafetensorError) as e:
        raise InputError(f"{folder}: unreadable checkpoint ({e})") from None
    return Checkpoint(folder, state, optimizer)


def save_weights(tensors: Mapping[str, torch.Tensor], folder: Path) -> None:
    """Trained parameters by name, for models without a Hugging Face layout."""
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / MODEL_WEIGHTS))


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """What `save_weights` wrote."""
    try:
        return load_file(folder / MODEL_WEIGHTS)
    except (OSError, SafetensorError) as e:
        raise InputError(f"{folder}: unreadable {MODEL_WEIGHTS} ({e})") from None
