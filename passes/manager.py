"""The pass manager: run a pipeline of passes over a graph, in order.

The manager calls `before_pass` / `after_pass` hooks around each pass, and `failed_pass` hooks
when a pass (or the verifier after it) raises: instrumentation such as timing, IR printing and
crash reproducers plugs in there (see cgc.debug.instruments). It can verify after every pass.
Passes themselves are defined in cgc.passes.base.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cgc.errors import IRError
from cgc.ir import Graph, verify
from cgc.passes.base import Pass, PassContext, PassResult
from cgc.passes.pipeline import parse_pipeline

BeforePass = Callable[[Pass, Graph, PassContext], None]
AfterPass = Callable[[Pass, Graph, PassResult, PassContext], None]
FailedPass = Callable[[Pass, Graph, Exception, PassContext], None]


class PassManager:
    """Runs a pipeline (a pipeline string or pass instances) over graphs."""

    def __init__(self, pipeline: str | Sequence[Pass], ctx: PassContext | None = None) -> None:
        self.passes: list[Pass] = (
            parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        )
        self.ctx = ctx if ctx is not None else PassContext()
        self.before_pass: list[BeforePass] = []
        self.after_pass: list[AfterPass] = []
        self.failed_pass: list[FailedPass] = []
        self.results: list[tuple[Pass, PassResult]] = []

    def run(self, graph: Graph) -> Graph:
        """Run every pass on `graph` (in place) and return it."""
        for p in self.passes:
            for hook in self.before_pass:
                hook(p, graph, self.ctx)
            try:
                result = p.run(graph, self.ctx)
                self.results.append((p, result))
                if self.ctx.verify_each:
                    try:
                        verify(graph)
                    except IRError as e:
                        raise IRError(f"after pass {p!r}: {e}") from None
            except Exception as error:
                for hook in self.failed_pass:
                    hook(p, graph, error, self.ctx)
                raise
            for hook in self.after_pass:
                hook(p, graph, result, self.ctx)
        return graph

    def __repr__(self) -> str:
        return ",".join(map(repr, self.passes))


def run_passes(graph: Graph, pipeline: str, *, verify_each: bool = False) -> Graph:
    """Run a pipeline string such as "canonicalize,fuse-attention" or "default" on `graph`."""
    return PassManager(pipeline, PassContext(verify_each=verify_each)).run(graph)
