"""The pass-debugging switches as click options, shared by `cgc compile` and `cgc opt`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cgc.debug.options import DebugOptions


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    """`("a,b", "c")` -> ("a", "b", "c"): lists may be comma-separated or repeated."""
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


_OPTIONS = [
    click.option(
        "--print-ir-before",
        multiple=True,
        metavar="PASS[,PASS]",
        help="Print the IR before these passes (on stderr).",
    ),
    click.option(
        "--print-ir-after",
        multiple=True,
        metavar="PASS[,PASS]",
        help="Print the IR after these passes (on stderr).",
    ),
    click.option("--print-ir-before-all", is_flag=True, help="Print the IR before every pass."),
    click.option("--print-ir-after-all", is_flag=True, help="Print the IR after every pass."),
    click.option(
        "--print-ir-after-change",
        is_flag=True,
        help="Print the IR after a pass only if it changed the graph (alone: after every "
        "pass that changed it).",
    ),
    click.option(
        "--print-ir-after-failure", is_flag=True, help="Print the IR a failing pass left."
    ),
    click.option("--time-passes", is_flag=True, help="Report the wall time of every pass."),
    click.option(
        "--pass-statistics", is_flag=True, help="Report what every pass did (rewrites, nodes)."
    ),
    click.option("--verify-each", is_flag=True, help="Verify the graph after every pass."),
    click.option(
        "--dump-dir",
        type=click.Path(file_okay=False, path_type=Path),
        metavar="DIR",
        help="Write every stage to DIR/00-input.cgc, DIR/01-PASS.cgc, ...",
    ),
    click.option(
        "--reproducer",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="PATH",
        help="Where to write the crash reproducer if a pass fails [a new temporary folder].",
    ),
]


def debug_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the switches to a click command; it receives them as `debug_options: DebugOptions`."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        options = DebugOptions(
            print_ir_before=_names(kwargs.pop("print_ir_before")),
            print_ir_after=_names(kwargs.pop("print_ir_after")),
            print_ir_before_all=kwargs.pop("print_ir_before_all"),
            print_ir_after_all=kwargs.pop("print_ir_after_all"),
            print_ir_after_change=kwargs.pop("print_ir_after_change"),
            print_ir_after_failure=kwargs.pop("print_ir_after_failure"),
            time_passes=kwargs.pop("time_passes"),
            pass_statistics=kwargs.pop("pass_statistics"),
            verify_each=kwargs.pop("verify_each"),
            dump_dir=kwargs.pop("dump_dir"),
            reproducer_path=kwargs.pop("reproducer"),
        )
        return fn(debug_options=options, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
