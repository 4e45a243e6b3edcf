"""Crash reproducers: when a pass raises, keep the IR it was given and the command replaying it.

Like MLIR's local crash reproducer: the file holds the IR before the failing pass (weights with
data go to a .safetensors file beside it) and a header naming the pass, the error and the
pipeline; `cgc opt FILE --passes PASS` replays just that pass.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import TextIO

import torch

from cgc.debug.instruments import Instrument, TextOutput
from cgc.debug.irfile import real_weights, write_ir, write_weights
from cgc.errors import InputError
from cgc.ir import Graph
from cgc.passes.base import Pass, PassContext


class CrashReproducer(Instrument, TextOutput):
    """Write a reproducer when a pass (or the verifier after it) raises; not when it refuses
    the user's input with an InputError (a missing loss, a bad option), which is no crash.

    `path` is the .cgc file to write (None: `reproducer.cgc` in a new temporary folder). After a
    failure `path`, `weights_path` and `command` say what was written and how to replay it; the
    two lines saying so go to `stream` (standard error) and are added to the error as a note.
    """

    def __init__(self, path: str | Path | None = None, stream: TextIO | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.stream = stream
        self.weights_path: Path | None = None
        self.command: str | None = None
        self.index = 0
        self._text = ""
        self._weights: dict[str, torch.Tensor] = {}

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        self.index += 1
        self._text = str(graph)
        self._weights = real_weights(graph)  # the tensors, not copies: passes never mutate them

    def failed_pass(self, p: Pass, graph: Graph, error: Exception, ctx: PassContext) -> None:
        if isinstance(error, InputError):  # a pass refusing the user's input is no crash
            return
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="cgc-reproducer-")) / "reproducer.cgc"
        words = ["cgc", "opt", str(self.path)]
        if self._weights:
            self.weights_path = write_weights(self.path.with_suffix(".safetensors"), self._weights)
            words += ["--weights", str(self.weights_path)]
        words += ["--passes", repr(p)]
        if ctx.verify_each:
            words.append("--verify-each")
        self.command = shlex.join(words)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        header = [
            f"cgc crash reproducer: pass {p!r} ({self.index}/{self.total}) raised "
            f"{type(error).__name__}: {message}",
            f"pipeline: {p!r}",
            f"full pipeline: {self.pipeline}",
            f"replay: {self.command}",
        ]
        write_ir(self.path, self._text, header)
        note = f"reproducer written to {self.path}\nreplay with: {self.command}"
        self.write(f"pass {p!r} failed; {note}\n")
        error.add_note(note)
