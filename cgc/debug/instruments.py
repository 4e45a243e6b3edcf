"""Pass instruments: watch a PassManager run, as MLIR's pass-manager switches do.

    pm = PassManager("default")
    PrintIR(after_change=True).attach(pm)      # IR after every pass that changed it, on stderr
    timing = TimePasses().attach(pm)
    pm.run(graph)
    print(timing.report())

An instrument's hooks run before each pass, after it, and when it (or the verifier after it)
raises. `cgc.debug.instrumented.run_instrumented` attaches the instruments a `DebugOptions` asks
for, which is what the `--print-ir-*`, `--time-passes`, `--pass-statistics`, `--verify-each`,
`--dump-dir` and `--reproducer` flags of `cgc compile` and `cgc opt` do.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TextIO

from cgc.debug.irfile import write_ir
from cgc.ir import Graph
from cgc.passes.base import Pass, PassContext, PassResult
from cgc.passes.manager import PassManager
from cgc.passes.registry import get_pass

_RULE = "===" + "-" * 73 + "==="


class Instrument:
    """Base of the instruments: hooks that do nothing until overridden."""

    pipeline = ""  # the pipeline string and its length, known once attached
    total = 0

    def attach(self, pm: PassManager) -> Self:
        """Register this instrument's hooks on `pm`; returns the instrument."""
        pm.before_pass.append(self.before_pass)
        pm.after_pass.append(self.after_pass)
        pm.failed_pass.append(self.failed_pass)
        self.pipeline = repr(pm)
        self.total = len(pm.passes)
        return self

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        """Called before `p` runs."""

    def after_pass(self, p: Pass, graph: Graph, result: PassResult, ctx: PassContext) -> None:
        """Called after `p` ran (and the graph verified, with verify_each)."""

    def failed_pass(self, p: Pass, graph: Graph, error: Exception, ctx: PassContext) -> None:
        """Called when `p` or the verifier after it raised `error`; the error then propagates."""


class TextOutput:
    """Output to a stream; standard error by default, looked up when written (tests swap it)."""

    stream: TextIO | None = None

    def write(self, text: str) -> None:
        out = self.stream or sys.stderr
        out.write(text)
        out.flush()


def _banner(title: str) -> str:
    return f"{_RULE}\n{title.center(len(_RULE)).rstrip()}\n{_RULE}\n"


class PrintIR(Instrument, TextOutput):
    """Print the IR before and/or after passes, like MLIR's --mlir-print-ir-* switches.

    `before` / `after` name passes (by pipeline name); `*_all` selects every pass. With
    `after_change`, IR is printed after a selected pass only if the pass changed the graph (its
    PassResult.changed), and when no pass is selected after, every pass is. `after_failure`
    prints the IR as the failing pass left it.
    """

    def __init__(
        self,
        *,
        before: Iterable[str] = (),
        after: Iterable[str] = (),
        before_all: bool = False,
        after_all: bool = False,
        after_change: bool = False,
        after_failure: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.before = set(before)
        self.after = set(after)
        for name in self.before | self.after:
            get_pass(name)  # a misspelt name fails before the pipeline runs
        self.before_all = before_all
        self.after_all = after_all
        self.after_change = after_change
        self.after_failure = after_failure
        self.stream = stream
        self.index = 0

    def _dump(self, title: str, graph: Graph) -> None:
        self.write(f"// -----// IR Dump {title} ({self.index}/{self.total}) //----- //\n")
        self.write(str(graph) + "\n")

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        self.index += 1
        if self.before_all or p.name in self.before:
            self._dump(f"Before {p!r}", graph)

    def after_pass(self, p: Pass, graph: Graph, result: PassResult, ctx: PassContext) -> None:
        chosen = self.after_all or p.name in self.after
        if self.after_change and not (self.after_all or self.after):
            chosen = True
        if chosen and (result.changed or not self.after_change):
            self._dump(f"After {p!r}", graph)

    def failed_pass(self, p: Pass, graph: Graph, error: Exception, ctx: PassContext) -> None:
        if self.after_failure:
            self._dump(f"After {p!r} Failed", graph)


class TimePasses(Instrument, TextOutput):
    """Wall time of every pass run, reported as MLIR's --mlir-timing does.

    The clock starts after the other instruments' before-hooks and stops before their
    after-hooks, so printing IR is not counted; verification with verify_each is.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.rows: list[tuple[str, float]] = []  # (pass, seconds), in pipeline order
        self._start = 0.0

    def attach(self, pm: PassManager) -> Self:
        pm.before_pass.append(self.before_pass)  # last before the pass ...
        pm.after_pass.insert(0, self.after_pass)  # ... and first after it
        pm.failed_pass.insert(0, self.failed_pass)
        self.pipeline = repr(pm)
        self.total = len(pm.passes)
        return self

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        self._start = time.perf_counter()

    def after_pass(self, p: Pass, graph: Graph, result: PassResult, ctx: PassContext) -> None:
        self.rows.append((repr(p), time.perf_counter() - self._start))

    def failed_pass(self, p: Pass, graph: Graph, error: Exception, ctx: PassContext) -> None:
        self.rows.append((f"{p!r} (failed)", time.perf_counter() - self._start))

    def report(self) -> str:
        """The timing table: one row per pass run, then the total."""
        total = sum(s for _, s in self.rows)
        lines = [
            _banner("... Execution time report ..."),
            f"  Total Execution Time: {total:.4f} seconds\n\n",
            "  ----Wall Time----  ----Name----\n",
        ]
        for name, seconds in [*self.rows, ("Total", total)]:
            share = 100 * seconds / total if total else 0.0
            lines.append(f"  {seconds:>8.4f} ({share:>5.1f}%)  {name}\n")
        return "".join(lines)


@dataclass(frozen=True)
class PassStats:
    """What one pass run did: its PassResult counts, rewrites counted, nodes before and after."""

    name: str
    changed: bool
    stats: dict[str, int]
    rewrites: int
    nodes_before: int
    nodes_after: int


class PassStatistics(Instrument, TextOutput):
    """Per-pass statistics (rewrites applied per pattern, node counts), as MLIR's
    --mlir-pass-statistics reports them."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.rows: list[PassStats] = []
        self._nodes = 0
        self._rewrites = 0

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        self._nodes, self._rewrites = len(graph.nodes), ctx.rewrites

    def after_pass(self, p: Pass, graph: Graph, result: PassResult, ctx: PassContext) -> None:
        self.rows.append(
            PassStats(
                repr(p),
                result.changed,
                dict(result.stats),
                ctx.rewrites - self._rewrites,
                self._nodes,
                len(graph.nodes),
            )
        )

    def report(self) -> str:
        """One block per pass run: `(S) count name` lines, as MLIR prints statistics."""
        lines = [_banner("... Pass statistics report ...")]
        for row in self.rows:
            change = "changed" if row.changed else "unchanged"
            lines.append(
                f"{row.name}  ({change}; nodes {row.nodes_before} -> {row.nodes_after}; "
                f"{row.rewrites} rewrites)\n"
            )
            width = max((len(str(v)) for v in row.stats.values()), default=1)
            lines += [f"  (S) {v:>{width}} {k}\n" for k, v in row.stats.items()]
        return "".join(lines)


class DumpStages(Instrument):
    """Write every stage to numbered files: `00-input.cgc`, `01-canonicalize.cgc`, ...

    A failing pass leaves `NN-name.failed.cgc` (the IR as it left it). Numbered files from an
    earlier run are removed first, so the folder shows one run.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.index = 0
        self.files: list[Path] = []

    def _write(self, stem: str, graph: Graph, note: str) -> None:
        width = max(2, len(str(self.total)))
        path = self.folder / f"{self.index:0{width}d}-{stem}.cgc"
        self.files.append(write_ir(path, graph, [note, f"pipeline: {self.pipeline}"]))

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        if self.index == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob("*.cgc"):
                if re.fullmatch(r"\d+-[\w.-]+\.cgc", old.name):
                    old.unlink()
            self._write("input", graph, "input of the pipeline")
        self.index += 1

    def after_pass(self, p: Pass, graph: Graph, result: PassResult, ctx: PassContext) -> None:
        change = "changed" if result.changed else "unchanged"
        self._write(p.name, graph, f"after pass {self.index}/{self.total} {p!r} ({change})")

    def failed_pass(self, p: Pass, graph: Graph, error: Exception, ctx: PassContext) -> None:
        note = f"after pass {self.index}/{self.total} {p!r} FAILED: {type(error).__name__}"
        self._write(f"{p.name}.failed", graph, note)
