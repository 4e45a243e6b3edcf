"""Debugging tools: pass instruments, crash reproducers, numerics comparison, bisection, pictures.

Names are imported on first use (as in `cgc`), so the command line can read its switches
without importing torch. (Per-node comparison lives in `node_compare`: a submodule named
`compare` would shadow the `compare` function here once imported.)
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Comparison": "numerics",
    "compare": "numerics",
    "compare_all": "numerics",
    "DebugOptions": "options",
    "DumpStages": "instruments",
    "Instrument": "instruments",
    "PassStatistics": "instruments",
    "PrintIR": "instruments",
    "TimePasses": "instruments",
    "instrument": "instrumented",
    "run_instrumented": "instrumented",
    "CrashReproducer": "reproducer",
    "read_ir": "irfile",
    "write_ir": "irfile",
    "NodeDiff": "node_compare",
    "NodeReport": "node_compare",
    "compare_graphs": "node_compare",
    "compare_values": "node_compare",
    "node_values": "node_compare",
    "BisectResult": "bisect",
    "bisect_model": "bisect",
    "bisect_pipeline": "bisect",
    "to_dot": "viz",
    "render": "viz",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cgc.debug.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cgc.debug' has no attribute {name!r}")
