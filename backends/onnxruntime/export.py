"""Writes a cgc graph as an ONNX model, its weights in one external-data file beside it.

Weight bytes are streamed to `<model>.data` tensor by tensor, so the protobuf holds only
references and models past protobuf's 2 GB limit export without building a huge message.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import onnx
import torch
from onnx import TensorProto, helper

from cgc.backends.onnxruntime.chunked import (
    emit_scan,
    emit_sum_scan,
    find_regions,
    find_sums,
    flat_values,
)
from cgc.backends.onnxruntime.lowering import ONNX_DTYPES, Emitter, raw_bytes, tensor_proto
from cgc.errors import CgcError
from cgc.ir import Graph, TensorType, Value
from cgc.ir.types import dtype_name
from cgc.passes import run_passes

# Fusions that pay off only with ORT's own kernels. They run on a copy while lowering, so the
# graph the pipeline produced (the artifact's graph.cgc, what users count ops in) is unchanged.
LOWERING_PIPELINE = "fuse-qkv-attention"

# ORT memory-maps an external tensor whose offset is a multiple of the page size.
_ALIGN = 4096
_PROTOBUF_LIMIT = 2**31


def to_onnx(
    graph: Graph,
    path: str | Path,
    *,
    external_data: bool = True,
    digests: dict[str, str] | None = None,
    chunked: bool = False,
) -> onnx.ModelProto:
    """Write `graph`, prepared for ORT, to the ONNX file `path`, its weights to `<path>.data`
    (or inline).

    Returns the model proto as written (external tensors hold references, not bytes); `digests`,
    when given, receives the SHA-256 of the external-data file by file name. `chunked` runs
    large elementwise regions as Scan loops over chunks (cgc.backends.onnxruntime.chunked),
    declaring the inputs and outputs only they touch flat. Files are
    staged in a temporary folder and moved into place at the end, so a failed export leaves
    nothing behind; the same graph gives byte-identical files.
    """
    path = Path(path)
    graph = prepared(graph)
    _check_weights(graph)
    if not external_data and sum(v.type.nbytes for v in graph.params.values()) >= _PROTOBUF_LIMIT:
        raise CgcError("weights exceed protobuf's 2 GB limit; export with external_data=True")
    model = _build(graph, chunked=chunked)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if external_data:
            location = path.name + ".data"
            with open(staging / location, "wb") as f:
                protos, digest = _write_external([graph], f, location)
            weights = list(protos.values())
            if digests is not None:
                digests[location] = digest
        else:
            weights = [tensor_proto(name, graph.weights[name]) for name in graph.params]
        model.graph.initializer.extend(weights)
        (staging / path.name).write_bytes(model.SerializeToString())
        if external_data:  # data first, so the model never points at a missing or stale file
            os.replace(staging / location, path.parent / location)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def prepared(graph: Graph) -> Graph:
    """`graph` with LOWERING_PIPELINE applied to a copy, or `graph` itself when nothing fuses."""
    if not any(n.op == "attention" for n in graph.nodes):
        return graph
    return run_passes(graph.copy(), LOWERING_PIPELINE)


def build_model(graph: Graph) -> onnx.ModelProto:
    """The ONNX model of `graph` (prepared for ORT) without its parameter initializers."""
    return _build(prepared(graph))


def _build(graph: Graph, *, chunked: bool = False) -> onnx.ModelProto:
    emitter = Emitter(graph.outputs)
    regions = find_regions(graph) if chunked else []
    flat = flat_values(graph, regions)
    sums = {id(s.total): s for s in find_sums(graph)} if chunked else {}
    last = {id(r.nodes[-1]): r for r in regions}
    inside = {id(n) for r in regions for n in r.nodes}
    inside |= {id(s.square) for s in sums.values()} | set(sums)
    for node in graph.nodes:
        if id(node) in last:
            emit_scan(emitter, last[id(node)], flat)
        elif id(node) in sums:
            emit_sum_scan(emitter, sums[id(node)])
        elif id(node) not in inside:
            emitter.lower(node)
    outputs = {id(v) for v in graph.outputs}
    intermediates = [
        v for n in graph.nodes if id(n) not in inside for v in n.outputs if id(v) not in outputs
    ]
    onnx_graph = helper.make_graph(
        emitter.nodes,
        graph.name,
        inputs=[_value_info(v, flat.get(v.name)) for v in graph.inputs],
        outputs=[_value_info(v, flat.get(v.name)) for v in graph.outputs],
        initializer=emitter.initializers,
        value_info=[_value_info(v) for v in intermediates],
    )
    opsets = [helper.make_opsetid(domain, v) for domain, v in sorted(emitter.opsets.items())]
    return helper.make_model(
        onnx_graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True),
        producer_name="cgc",
    )


def _value_info(v: Value, shape: list[int] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(v.name, ONNX_DTYPES[v.dtype], shape or v.shape)


def _check_weights(graph: Graph) -> None:
    """Every parameter needs real data of its declared type: ONNX files store the weights."""
    meta = [n for n in graph.params if n not in graph.weights or graph.weights[n].is_meta]
    if meta:
        raise CgcError(
            f"{len(meta)} of {len(graph.params)} parameters are meta weights (no data), "
            f"e.g. %{meta[0]}; ONNX export needs real weights: load the model with its checkpoint"
        )
    for name, value in graph.params.items():
        data = graph.weights[name]
        if TensorType(tuple(data.shape), dtype_name(data.dtype)) != value.type:
            raise CgcError(
                f"weight %{name} is {dtype_name(data.dtype)}{list(data.shape)} "
                f"but the graph declares {value.type}"
            )


def _write_external(
    graphs: Sequence[Graph], f: BinaryIO, location: str
) -> tuple[dict[str, TensorProto], str]:
    """Append each weight of `graphs` (once per name) to `f` at a page-aligned offset; the
    initializers pointing at them by name, and the file's SHA-256.

    The digest is computed on a worker thread while the bytes are written (hashlib releases the
    GIL), so an artifact's manifest does not read hundreds of MB of weights back.
    """
    protos: dict[str, TensorProto] = {}
    digest = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=1) as hasher:  # one worker keeps updates in order
        for graph in graphs:
            for name, value in graph.params.items():
                if name in protos:
                    continue
                data = raw_bytes(graph.weights[name])
                padding = bytes(-f.tell() % _ALIGN)
                f.write(padding)
                hasher.submit(digest.update, padding)
                proto = TensorProto(name=name, data_type=ONNX_DTYPES[value.dtype])
                proto.dims.extend(value.shape)
                proto.data_location = TensorProto.EXTERNAL
                for key, val in (
                    ("location", location),
                    ("offset", f.tell()),
                    ("length", data.nbytes),
                ):
                    proto.external_data.add(key=key, value=str(val))
                f.write(data)
                hasher.submit(digest.update, data)
                protos[name] = proto
    return protos, digest.hexdigest()


def to_onnx_models(
    graphs: Mapping[str, Graph], folder: str | Path, data_file: str
) -> dict[str, str]:
    """Write several graphs (file name -> graph) as ONNX models into `folder` with one shared
    external-data file: a weight several graphs hold (same name, same tensor) is stored once.

    Returns the SHA-256 of every file written, by name. Staged and moved into place like
    to_onnx. Used for the prefill and decode graphs of generation, which share every weight.
    """
    folder = Path(folder)
    prepared_graphs = {name: prepared(g) for name, g in graphs.items()}
    for name, g in prepared_graphs.items():
        _check_weights(g)
        for other in prepared_graphs.values():
            for p in g.params.keys() & other.params.keys():
                if g.weights[p] is not other.weights[p] and not torch.equal(
                    g.weights[p], other.weights[p]
                ):
                    raise CgcError(f"{name}: weight %{p} differs between the graphs sharing it")
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".onnx.", dir=folder))
    digests: dict[str, str] = {}
    try:
        with open(staging / data_file, "wb") as f:
            protos, digests[data_file] = _write_external(
                list(prepared_graphs.values()), f, data_file
            )
        for name, g in prepared_graphs.items():
            model = _build(g)
            model.graph.initializer.extend(protos[p] for p in g.params)
            data = model.SerializeToString()
            (staging / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        for name in [data_file, *prepared_graphs]:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return digests
