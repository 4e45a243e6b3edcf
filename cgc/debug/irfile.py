"""IR files: a graph's text form, with `//` header comments, and its weights beside it.

The text form holds no weight data, yet passes read some (constant folding, causal masks), so
a file meant for replay keeps the data in a .safetensors file: `cgc opt FILE.cgc --weights W`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cgc.errors import InputError
from cgc.files import staged_file, write_atomic
from cgc.ir import Graph, parse
from cgc.ir.types import dtype_name


def read_ir(path: str | Path, weights: str | Path | None = None) -> Graph:
    """Parse a .cgc file (`-` reads standard input) and attach weights from a .safetensors file."""
    if str(path) == "-":
        text = sys.stdin.read()
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such IR file")
        text = path.read_text()
    graph = parse(text)
    if weights is not None:
        graph.weights.update(_load_weights(Path(weights), graph))
    return graph


def _load_weights(path: Path, graph: Graph) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    for name, data in tensors.items():
        value = graph.params.get(name)
        if value is None:
            raise InputError(f"{path}: weight {name!r} is not a parameter of graph @{graph.name}")
        if tuple(data.shape) != value.shape or dtype_name(data.dtype) != value.dtype:
            raise InputError(
                f"{path}: weight {name} is {dtype_name(data.dtype)}{list(data.shape)}, "
                f"the graph declares {value.type}"
            )
    return tensors


def ir_text(graph: Graph | str, header: Sequence[str] = ()) -> str:
    """A graph's text form (or text already printed) after `// ` comment lines."""
    return "".join(f"// {line}\n" for line in header) + str(graph)


def write_ir(path: str | Path, graph: Graph | str, header: Sequence[str] = ()) -> Path:
    """Write the text form with a header (atomically: a reader never sees half a file)."""
    return write_atomic(Path(path), ir_text(graph, header).encode())


def real_weights(graph: Graph) -> dict[str, torch.Tensor]:
    """The parameters that hold data (meta weights and missing data are left out)."""
    return {
        name: data
        for name in graph.params
        if (data := graph.weights.get(name)) is not None and not data.is_meta
    }


def write_weights(path: str | Path, weights: dict[str, torch.Tensor]) -> Path:
    """Write weights to .safetensors; tensors sharing storage (tied weights) are copied apart."""
    seen: set[int] = set()
    tensors = {}
    for name, data in weights.items():
        data = data.detach().contiguous()
        storage = data.untyped_storage().data_ptr()
        tensors[name] = data.clone() if storage in seen else data
        seen.add(storage)
    with staged_file(path) as staging:
        save_file(tensors, str(staging))
    return Path(path)
