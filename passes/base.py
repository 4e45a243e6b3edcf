"""The pass: a small class with a `name`, a docstring whose first line describes it, typed
options declared as annotated class attributes with defaults, and `run(graph, ctx) ->
PassResult`; with the context a pipeline run shares and the result a pass reports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_type_hints

from cgc.errors import InputError
from cgc.ir import Graph

OPTION_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class PassResult:
    """What a pass did: whether the graph changed, and counts such as rewrites per pattern."""

    changed: bool
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: dict[str, int]) -> PassResult:
        """A result from counts alone: changed when any count is non-zero."""
        kept = {k: v for k, v in sorted(stats.items()) if v}
        return cls(bool(kept), kept)


@dataclass
class PassContext:
    """State shared by the passes of one pipeline run.

    `rewrites` counts every rewrite any pass applied; with `rewrite_limit` set, rewrites past
    the limit are refused, so a miscompile can be bisected to the first bad rewrite.
    """

    verify_each: bool = False
    rewrite_limit: int | None = None
    rewrites: int = 0

    def allow_rewrite(self) -> bool:
        """Count one more rewrite, or refuse it once `rewrite_limit` rewrites were done."""
        if self.rewrite_limit is not None and self.rewrites >= self.rewrite_limit:
            return False
        self.rewrites += 1
        return True


@dataclass(frozen=True)
class Option:
    """One declared pass option."""

    name: str
    type: type
    default: Any

    @property
    def spelling(self) -> str:
        """How the option is written in a pipeline string: dashes, as in MLIR."""
        return self.name.replace("_", "-")


class Pass(ABC):
    """Base of every pass; subclasses set `name` and annotate options with defaults."""

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        declared = self.options()
        for key, value in options.items():
            if key not in declared:
                raise InputError(f"pass {self.name} has no option {key!r}; {_valid(self)}")
            option = declared[key]
            if not _fits(value, option.type):
                raise InputError(
                    f"option {option.spelling} of pass {self.name} expects "
                    f"{option.type.__name__}, got {value!r}"
                )
            setattr(self, key, value)

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The options this pass declares, by Python name."""
        hints = get_type_hints(cls)
        return {
            key: Option(key, hint, getattr(cls, key))
            for key, hint in hints.items()
            if hint in OPTION_TYPES and not key.startswith("_")
        }

    @classmethod
    def description(cls) -> str:
        """The first line of the pass's docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    @abstractmethod
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Transform `graph` in place."""

    def __repr__(self) -> str:
        changed = {
            o.spelling: getattr(self, key)
            for key, o in self.options().items()
            if getattr(self, key) != o.default
        }
        args = ",".join(f"{k}={_format(v)}" for k, v in changed.items())
        return f"{self.name}{{{args}}}" if args else self.name


def _fits(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _format(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _valid(p: Pass | type[Pass]) -> str:
    names = [o.spelling for o in p.options().values()]
    return f"valid options: {', '.join(names)}" if names else "it takes no options"
