"""Fixtures for the debugging tools: the tiny GPT traced once, and a CLI runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from cgc import models
from cgc.cli import main
from cgc.debug.irfile import real_weights, write_ir, write_weights
from cgc.driver import trace
from cgc.ir import Graph


@dataclass(frozen=True)
class Tiny:
    """tiny-111m at batch 1, sequence 8: the module, its inputs and the traced graph."""

    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    traced: Graph

    def graph(self) -> Graph:
        """A fresh copy of the traced graph (passes change graphs in place)."""
        return self.traced.copy()

    def files(self, folder: Path) -> tuple[Path, Path]:
        """The traced graph as `traced.cgc` and `traced.safetensors` in `folder`."""
        ir = write_ir(folder / "traced.cgc", self.traced)
        return ir, write_weights(folder / "traced.safetensors", real_weights(self.traced))


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    config = models.get_config("tiny-111m")
    module = models.build("tiny-111m").eval()
    inputs = models.example_inputs(config, 1, 8)
    return Tiny(module, inputs, trace(module, inputs))


def _cgc(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def cgc():
    """cgc(*args) -> click Result: the command line run in-process."""
    return _cgc
