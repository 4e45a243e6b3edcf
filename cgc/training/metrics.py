"""Training metrics: `metrics.jsonl`, one JSON object per step (step, loss, lr, grad_norm,
tokens_per_s; validation adds val_loss), and `loss.png`, train and validation loss by step."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cgc.files import staged_file, write_atomic

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl, in order (none when there is no file yet)."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends records to metrics.jsonl, flushed line by line so a crash loses none.

    Resuming from step N first drops the records after N: those steps run again.
    """

    def __init__(self, folder: Path, resume_step: int | None = None) -> None:
        self.folder = folder
        self.path = folder / METRICS_FILE
        if resume_step is not None:
            kept = [r for r in read_metrics(folder) if r["step"] <= resume_step]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._file = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot(folder: Path, title: str) -> Path:
    """Draw loss.png from metrics.jsonl: the loss of every step and the validation loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(folder)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), lw=0.8, alpha=0.7, label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", lw=1.5, ms=4, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = folder / PLOT_FILE
    with staged_file(target) as staging:
        fig.savefig(staging, format="png")
    plt.close(fig)
    return target
