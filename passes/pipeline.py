"""Pipeline strings: `canonicalize,fuse-attention{large-negative=-1e9},fuse-gelu`.

Passes are separated by commas; options follow a pass in braces as `key=value` pairs (keys use
dashes, as in MLIR). The name `default` expands to DEFAULT_PIPELINE.
"""

from __future__ import annotations

import re
from typing import Any

from cgc.errors import InputError
from cgc.passes.base import Option, Pass
from cgc.passes.registry import get_pass

# fuse-layer-norm runs before fuse-rms-norm: a layer norm is an RMS norm of x - mean(x).
DEFAULT_PIPELINE = (
    "canonicalize,fuse-layer-norm,fuse-rms-norm,fuse-rotary-embedding,fuse-attention,fuse-gelu,"
    "fuse-linear,fuse-swiglu,fuse-cross-entropy,canonicalize"
)

_ITEM = re.compile(r"\s*([A-Za-z][\w-]*)\s*(?:\{([^{}]*)\})?\s*(,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """Pass instances for a pipeline string; InputError names the problem and the valid names."""
    passes: list[Pass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if m is None or (m.group(3) == "," and m.end() == len(text)):
            raise InputError(
                f"malformed pipeline {text!r} at character {pos + 1}; write passes as "
                "name or name{key=value,...} separated by commas"
            )
        name, body = m.group(1), m.group(2)
        if name == "default":
            if body is not None:
                raise InputError("the default pipeline takes no options; list its passes instead")
            passes += parse_pipeline(DEFAULT_PIPELINE)
        else:
            cls = get_pass(name)
            passes.append(cls(**_options(cls, body or "")))
        pos = m.end()
    return passes


def _options(cls: type[Pass], body: str) -> dict[str, Any]:
    declared = {o.spelling: o for o in cls.options().values()}
    valid = ", ".join(declared) or "none"
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq:
            raise InputError(f"option {item!r} of pass {cls.name} needs a value: {item}=...")
        option = declared.get(key)
        if option is None:
            raise InputError(f"pass {cls.name} has no option {key!r}; valid options: {valid}")
        out[option.name] = _value(cls, option, raw)
    return out


def _value(cls: type[Pass], option: Option, raw: str) -> Any:
    try:
        if option.type is bool:
            return {"true": True, "false": False}[raw.lower()]
        return option.type(raw)
    except (KeyError, ValueError):
        kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise InputError(
            f"option {option.spelling} of pass {cls.name} expects {kinds[option.type]}, got {raw!r}"
        ) from None
