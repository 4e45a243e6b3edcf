"""Backends by name. Each backend module provides `compile(graph, info, **options) -> Artifact`
and `load(folder, manifest) -> Artifact`; modules import lazily so `cgc --help` stays fast."""

from __future__ import annotations

import importlib
from types import ModuleType

from cgc.errors import InputError

BACKENDS: dict[str, str] = {
    "cerebras": "cgc.backends.cerebras",
    "onnxruntime": "cgc.backends.onnxruntime",
}


def get_backend(name: str) -> ModuleType:
    """The backend module called `name`."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose from {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(BACKENDS[name])
