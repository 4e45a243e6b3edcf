"""The pass registry: every pass by its pipeline name."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from cgc.errors import InputError

if TYPE_CHECKING:
    from cgc.passes.base import Pass

P = TypeVar("P", bound="type[Pass]")

_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: P) -> P:
    """Class decorator: make a pass available under its `name` in pipeline strings."""
    if cls.name in _PASSES:
        raise ValueError(f"pass {cls.name!r} registered twice")
    if not (cls.__doc__ or "").strip():
        raise ValueError(f"pass {cls.name!r} needs a docstring: its first line describes it")
    _PASSES[cls.name] = cls
    return cls


def unregister_pass(name: str) -> type[Pass]:
    """Remove the pass registered as `name` (tests that register passes clean up with it)."""
    try:
        return _PASSES.pop(name)
    except KeyError:
        raise InputError(f"no pass {name!r} is registered") from None


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`."""
    try:
        return _PASSES[name]
    except KeyError:
        raise InputError(
            f"unknown pass {name!r}; valid passes: {', '.join(sorted(_PASSES))}"
        ) from None


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, sorted."""
    return dict(sorted(_PASSES.items()))
