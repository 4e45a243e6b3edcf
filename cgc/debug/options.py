"""The pass-debugging switches as data: what `cgc compile` and `cgc opt` flags ask for.

Kept free of torch and the IR so the command line can build it without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DebugOptions:
    """The pass-debugging switches, named as on the command line."""

    print_ir_before: tuple[str, ...] = ()
    print_ir_after: tuple[str, ...] = ()
    print_ir_before_all: bool = False
    print_ir_after_all: bool = False
    print_ir_after_change: bool = False
    print_ir_after_failure: bool = False
    time_passes: bool = False
    pass_statistics: bool = False
    verify_each: bool = False
    dump_dir: Path | None = None
    reproducer: bool = True  # write a crash reproducer when a pass raises ...
    reproducer_path: Path | None = None  # ... here, or in a new temporary folder
