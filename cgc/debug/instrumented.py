"""Run a pipeline with the instruments a `DebugOptions` asks for (the CLI's debugging flags).

Apart from `cgc.debug.instruments` so that the crash reproducer, itself an instrument, can build
on the instrument base without the two modules importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from cgc.debug.instruments import DumpStages, Instrument, PassStatistics, PrintIR, TimePasses
from cgc.debug.options import DebugOptions
from cgc.debug.reproducer import CrashReproducer
from cgc.ir import Graph
from cgc.passes.base import Pass, PassContext
from cgc.passes.manager import AfterPass, PassManager


def instrument(pm: PassManager, options: DebugOptions, stream: TextIO | None = None) -> list:
    """Attach the instruments `options` asks for to `pm`; returns them, in attach order."""
    o = options
    pm.ctx.verify_each = pm.ctx.verify_each or o.verify_each
    attached: list[Instrument] = []
    printing = (o.print_ir_before, o.print_ir_after, o.print_ir_before_all, o.print_ir_after_all)
    if any(printing) or o.print_ir_after_change or o.print_ir_after_failure:
        attached.append(
            PrintIR(
                before=o.print_ir_before,
                after=o.print_ir_after,
                before_all=o.print_ir_before_all,
                after_all=o.print_ir_after_all,
                after_change=o.print_ir_after_change,
                after_failure=o.print_ir_after_failure,
                stream=stream,
            )
        )
    if o.dump_dir is not None:
        attached.append(DumpStages(o.dump_dir))
    if o.reproducer:
        attached.append(CrashReproducer(o.reproducer_path, stream=stream))
    if o.pass_statistics:
        attached.append(PassStatistics(stream))
    if o.time_passes:
        attached.append(TimePasses(stream))
    for item in attached:
        item.attach(pm)
    return attached


def run_instrumented(
    graph: Graph,
    pipeline: str | Sequence[Pass],
    options: DebugOptions | None = None,
    stream: TextIO | None = None,
    *,
    after_pass: Sequence[AfterPass] = (),
) -> PassManager:
    """Run `pipeline` (a string or pass instances) on `graph` (in place) with the instruments
    `options` asks for; `after_pass` hooks run after theirs.

    Timing and statistics reports are written at the end, also when a pass fails.
    """
    pm = PassManager(pipeline, PassContext())
    attached = instrument(pm, options or DebugOptions(), stream)
    pm.after_pass += after_pass
    try:
        pm.run(graph)
    finally:
        for item in attached:
            if isinstance(item, PassStatistics | TimePasses):
                item.write(item.report())
    return pm
